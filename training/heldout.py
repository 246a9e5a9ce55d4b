"""The held-out split: what the evaluation set (``evalset/make.py``) uses and training never does.

Written once here and imported by both recipes, so the evaluation set stays unseen by the model:

- **Voices.** The festival voice ``cmu_us_slt_arctic_hts``, the flite voice ``rms`` and the
  espeak-ng variants ``+f4`` and ``+m7`` (with any accent) speak only in the evaluation set, as
  targets and as babble talkers. ``training/make_data.py`` drops them from its voice lists, so
  every setting of these voices is held out with them.
- **Sentences.** ``SENTENCES`` below, written for this split. They are not built from the word
  lists and templates of ``training/sentences.py`` (imperatives, figures, dialogue), and
  ``make_data.py`` redraws any generated sentence that equals one of them anyway.
- **Noise.** Every noise instance of the evaluation set is drawn from its own
  ``numpy.random.default_rng(seed)`` with ``seed >= NOISE_SEED_MIN``; the training recipe's noise
  generator is seeded below it (``make_data.py --noise-seed``, checked there).

Only the standard library is imported, so both scripts (and the tests) can read it cheaply.
"""

from __future__ import annotations

import re

__all__ = [
    "ESPEAK_VARIANTS", "FESTIVAL_VOICES", "FLITE_VOICES", "NOISE_SEED_MIN", "SENTENCES",
    "is_heldout_espeak", "is_heldout_sentence", "normalise",
]

FESTIVAL_VOICES = ("cmu_us_slt_arctic_hts",)
FLITE_VOICES = ("rms",)
ESPEAK_VARIANTS = ("+f4", "+m7")  # espeak-ng's "female4" and "male7" (`espeak-ng --voices=variant`)
NOISE_SEED_MIN = 9000

SENTENCES = (
    "Turn the valve a quarter of the way and wait for the pressure to settle.",
    "Our flight to Lisbon leaves at seven forty, so please be at the desk by six.",
    "Bring me the blue folder from the second drawer, not the red one.",
    "The recipe needs two cups of oats, a pinch of cinnamon and some warm milk.",
    "If the printer jams again, open the side panel and pull the sheet out slowly.",
    "She scored eighty one points in the final round and won the cup.",
    "Please call the clinic before noon to move your appointment to Thursday.",
    "The museum closes early on holidays, so plan to arrive before three.",
    "Water boils at a lower temperature high up in the mountains.",
    "Can you hear me clearly, or should I move closer to the microphone?",
    "We painted the fence green last summer, and it is already peeling.",
    "Add the eggs one at a time and keep stirring until the batter is smooth.",
    "The train to Oslo is delayed by twenty minutes because of snow on the line.",
    "Remember to save your work before you unplug the laptop.",
    "His grandmother grew tomatoes, beans and sunflowers behind the house.",
    "The meeting moved to room four hundred and twelve on the fourth floor.",
    "Keep your receipt, since the shop only accepts returns within two weeks.",
    "A thin layer of frost covered the windshield this morning.",
    "Tell the driver to stop at the pharmacy on the way home.",
    "The library lends tablets for up to fourteen days at no cost.",
    "Lower the volume a little, the neighbours are trying to sleep.",
    "Our team shipped the update on Friday and fixed three bugs on Monday.",
    "The bakery on the corner sells rye loaves only on weekends.",
    "Press and hold the power button for ten seconds to reset the device.",
    "Most owls hunt at night and rest in hollow trees during the day.",
    "I left the umbrella in the taxi, and of course it started to pour.",
    "Fold the map along the creases or it will never fit back in the case.",
    "The concert starts at half past eight, doors open an hour earlier.",
    "Check the tyre pressure before the long drive north.",
    "They rebuilt the old lighthouse with stone from the same quarry.",
    "Sorry, the number you dialled is not in service at the moment.",
    "Measure twice and cut once, my uncle used to say in his workshop.",
    "The cat knocked a glass of juice off the table and ran under the bed.",
    "Send the invoice to the accounts team and copy me on the email.",
    "Fresh basil wilts quickly, so keep it in a jar of water on the counter.",
    "The bridge will be closed for repairs from Monday until the end of June.",
    "Please spell your last name slowly so I can write it down.",
    "Wind turbines turn more slowly than they appear from the road.",
    "My sister plays the cello in a quartet that meets every Tuesday.",
    "Unplug the kettle, wipe it dry and put it back on the shelf.",
    "The forecast promises sunshine, but I would still take a coat.",
    "Nine people signed up for the trip, and two more are on the waiting list.",
    "Walk past the fountain, then take the second street on the left.",
    "The soup tastes better the next day, once the spices have settled.",
    "We counted forty seven geese flying south over the marsh.",
    "Could you read the last paragraph again, a bit more slowly?",
    "Plant the bulbs in autumn and you will see flowers in early spring.",
    "The elevator is out of order, so use the stairs by the lobby.",
    "He restored the old radio and it still picks up stations from abroad.",
    "Thank you for waiting, your call will be answered shortly.",
    # babble talkers only (never a target sentence)
    "Did anyone see where I put the keys to the storage room?",
    "The quarterly numbers look fine, but the shipping costs keep rising.",
    "I think the blue one suits you better than the grey one.",
    "Last time we went there the queue went round the whole block.",
    "Honestly, the sequel was much better than the first film.",
    "We should book the hotel before the prices go up again.",
    "My phone battery dies by lunchtime since the last update.",
    "She says the new bus route saves her almost half an hour.",
    "Whose turn is it to bring the snacks on Friday?",
    "The garden centre has a sale on pots and compost this week.",
    "He finally fixed the squeaky door with a drop of oil.",
    "You can borrow my charger if you give it back tomorrow.",
)
TARGET_SENTENCES = 50  # SENTENCES[:50] are spoken by the target talkers, the rest only in babble


def normalise(text: str) -> str:
    """Lower case, letters, digits and single spaces: two sentences equal by this are the same."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


_HELD = frozenset(normalise(s) for s in SENTENCES)


def is_heldout_sentence(text: str) -> bool:
    """True when ``text`` is one of ``SENTENCES`` (case and punctuation ignored)."""
    return normalise(text) in _HELD


def is_heldout_espeak(voice: str) -> bool:
    """True for an espeak-ng voice name such as ``en-gb-x-rp+f4`` whose variant is held out."""
    _, plus, variant = voice.partition("+")
    return bool(plus) and f"+{variant}" in ESPEAK_VARIANTS
