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

SENTENCES = (  # short on purpose: the committed set must stay a few MB
    "Turn the valve a quarter of the way.",
    "Our flight to Lisbon leaves at seven forty.",
    "Bring me the blue folder, not the red one.",
    "Add a pinch of cinnamon and some warm milk.",
    "If the printer jams, open the side panel.",
    "She scored eighty one points and won the cup.",
    "Please call the clinic before noon on Thursday.",
    "The museum closes early on holidays.",
    "Water boils sooner high up in the mountains.",
    "Can you hear me, or should I come closer?",
    "We painted the fence green last summer.",
    "Add the eggs one at a time and keep stirring.",
    "The train to Oslo is twenty minutes late.",
    "Save your work before you unplug the laptop.",
    "Her grandmother grew tomatoes behind the house.",
    "The meeting moved to room four hundred and twelve.",
    "Keep your receipt for two weeks.",
    "Frost covered the windshield this morning.",
    "Tell the driver to stop at the pharmacy.",
    "The library lends tablets for fourteen days.",
    "Lower the volume, the neighbours are asleep.",
    "We shipped the update on Friday afternoon.",
    "The corner bakery sells rye only on weekends.",
    "Hold the power button for ten seconds.",
    "Most owls hunt at night and rest by day.",
    "I left my umbrella in the taxi again.",
    "Fold the map along the creases, please.",
    "The concert starts at half past eight.",
    "Check the tyre pressure before the long drive.",
    "They rebuilt the lighthouse with local stone.",
    "Sorry, that number is not in service.",
    "Measure twice and cut once, my uncle said.",
    "The cat knocked a glass of juice off the table.",
    "Send the invoice to the accounts team today.",
    "Keep fresh basil in a jar of water.",
    "The bridge is closed for repairs until June.",
    "Please spell your last name slowly.",
    "Wind turbines turn slower than they seem.",
    "My sister plays the cello every Tuesday.",
    "Unplug the kettle and wipe it dry.",
    "The forecast says sunshine, but take a coat.",
    "Nine people signed up for the trip.",
    "Walk past the fountain, then turn left.",
    "The soup tastes better the next day.",
    "We counted forty seven geese over the marsh.",
    "Could you read that paragraph again?",
    "Plant the bulbs in autumn for spring flowers.",
    "The elevator is broken, so use the stairs.",
    "He restored an old radio from the attic.",
    "Thank you for waiting, we will answer shortly.",
    # babble talkers only (never a target sentence)
    "Did anyone see the keys to the storage room?",
    "The quarterly numbers look fine, but shipping costs keep rising.",
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
