"""Random English sentences for TTS training speech.

Written from scratch for this project: small hand-made word lists and a
handful of sentence templates. The output is plain text for festival, flite
and espeak-ng. Nothing here comes from any evaluation corpus.
"""

from __future__ import annotations

import random

__all__ = ["make_sentence", "make_paragraph"]

_NOUNS = (
    "garden window river letter bottle engine ladder basket candle mirror pocket shadow "
    "harbor kitchen blanket hammer pencil ticket market station bridge forest meadow "
    "tower island valley wagon saddle jacket button kettle carpet pillow lantern "
    "orchard village castle tunnel compass anchor barrel feather pebble puzzle rocket "
    "parcel teacup violin trumpet drum whistle signal planet comet desert glacier "
    "canyon ribbon sweater chimney cellar attic balcony fence gate path road street "
    "lake pond stream ocean shore cliff hill mountain cloud storm breeze thunder "
    "sparrow rabbit horse tiger falcon turtle beetle dolphin salmon pony kitten puppy "
    "farmer sailor doctor teacher painter baker driver pilot singer writer neighbor "
    "student captain clerk miner tailor merchant gardener engineer cousin stranger "
    "apple lemon cherry onion carrot potato pepper melon bread cheese butter honey "
    "coffee soup salad pie cake biscuit sugar salt flour rice bean corn wheat"
).split()

_ADJS = (
    "small large quiet noisy bright dark warm cold old young heavy light soft hard "
    "sharp smooth rough gentle brave clever lazy eager calm busy empty full narrow wide "
    "shallow deep golden silver wooden plain fancy simple strange familiar distant "
    "nearby tiny huge crooked straight tall short green blue red yellow purple brown "
    "grey white black pale rich poor fresh stale sweet bitter sour salty crisp damp "
    "dusty shiny muddy polished broken faded rusty fragile sturdy proud humble cheerful "
    "gloomy patient restless careful curious"
).split()

_VERBS_PAST = (
    "carried painted found lifted dropped opened closed pushed pulled cleaned fixed "
    "moved built watched followed crossed chased counted measured buried wrapped "
    "folded tied mended polished borrowed returned sold bought packed loaded emptied "
    "filled covered noticed visited reached passed warned thanked called helped "
    "joined left joined tasted cooked baked planted gathered sorted traded guarded"
).split()

_VERBS_INTRANS = (
    "waited laughed slept rested wandered shivered sang danced shouted whispered "
    "smiled frowned paused hurried stumbled trembled glowed faded vanished arrived "
    "departed returned listened argued worked played"
).split()

_ADVERBS = (
    "slowly quickly quietly loudly carefully gently suddenly happily sadly calmly "
    "eagerly proudly softly boldly firmly briskly lazily neatly barely nearly"
).split()

_PLACES = (
    "near the old mill|by the river|behind the barn|under the bridge|on the hill|"
    "in the kitchen|at the station|across the field|beside the road|inside the shop|"
    "along the shore|past the church|through the forest|over the fence|at the corner|"
    "on the top shelf|in the back room|beyond the gate|at the market|by the fire"
).split("|")

_TIMES = (
    "at dawn|after lunch|before dinner|late at night|early in the morning|on Sunday|"
    "last winter|next spring|every evening|in the summer|during the storm|at noon|"
    "on a cold day|after the rain|before the train left|when the bell rang"
).split("|")

_NAMES = (
    "Anna Ben Clara David Ella Frank Grace Henry Iris Jack Kate Leo Mary Nick Olive "
    "Peter Rose Sam Tom Vera Will Zoe Martha Oscar Lucy Hugo Nora Felix Ruth Ivan"
).split()

_NUMBERS = (
    "two three four five six seven eight nine ten eleven twelve twenty thirty forty "
    "fifty a hundred"
).split(" ")

_QUESTIONS = ("Did", "Could", "Would", "Should", "Will", "Can")
_VERBS_BASE = (
    "carry paint find lift drop open close push pull clean fix move build watch follow "
    "cross count measure wrap fold tie mend borrow return sell buy pack load fill cover "
    "visit reach pass call help join taste cook bake plant gather sort"
).split()


def _np(rng: random.Random, plural_ok: bool = True) -> str:
    """A noun phrase: article, optional adjectives, noun."""
    noun = rng.choice(_NOUNS)
    adjs = [rng.choice(_ADJS) for _ in range(rng.choice((0, 1, 1, 2)))]
    if plural_ok and rng.random() < 0.25:
        num = rng.choice(_NUMBERS)
        return " ".join([num, *adjs, noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")])
    art = rng.choice(("the", "the", "a", "my", "his", "her", "our", "that", "this"))
    if art == "a" and (adjs[0] if adjs else noun)[0] in "aeiou":
        art = "an"
    return " ".join([art, *adjs, noun])


def _subject(rng: random.Random) -> str:
    return rng.choice(_NAMES) if rng.random() < 0.4 else _np(rng, plural_ok=False)


def make_sentence(rng: random.Random) -> str:
    """One sentence from a random template, capitalised and punctuated."""
    t = rng.randrange(9)
    if t == 0:
        s = f"{_subject(rng)} {rng.choice(_VERBS_PAST)} {_np(rng)} {rng.choice(_PLACES)}"
    elif t == 1:
        s = f"{_subject(rng)} {rng.choice(_VERBS_INTRANS)} {rng.choice(_ADVERBS)} {rng.choice(_TIMES)}"
    elif t == 2:
        s = (f"{rng.choice(_TIMES)}, {_subject(rng)} {rng.choice(_VERBS_PAST)} {_np(rng)} "
             f"and {rng.choice(_VERBS_PAST)} {_np(rng)}")
    elif t == 3:
        s = f"{rng.choice(_QUESTIONS)} {_subject(rng)} {rng.choice(_VERBS_BASE)} {_np(rng)} {rng.choice(_PLACES)}"
        return s[0].upper() + s[1:] + "?"
    elif t == 4:
        s = f"{_np(rng, False)} was {rng.choice(_ADJS)} and {rng.choice(_ADJS)}, so {_subject(rng)} " \
            f"{rng.choice(_VERBS_INTRANS)}"
    elif t == 5:
        s = f"{rng.choice(_VERBS_BASE)} {_np(rng)} {rng.choice(_ADVERBS)} before {_subject(rng)} " \
            f"{rng.choice(_VERBS_INTRANS)}"
    elif t == 6:
        s = f"{_subject(rng)} said that {_np(rng, False)} {rng.choice(_VERBS_PAST)} {_np(rng)}"
    elif t == 7:
        s = f"there were {rng.choice(_NUMBERS)} {rng.choice(_NOUNS)}s {rng.choice(_PLACES)} {rng.choice(_TIMES)}"
    else:
        s = (f"{_subject(rng)} {rng.choice(_ADVERBS)} {rng.choice(_VERBS_PAST)} {_np(rng)}, "
             f"but {_subject(rng)} {rng.choice(_VERBS_INTRANS)}")
    end = "!" if rng.random() < 0.08 else "."
    return s[0].upper() + s[1:] + end


def make_paragraph(rng: random.Random, n_sentences: int) -> str:
    return " ".join(make_sentence(rng) for _ in range(n_sentences))


if __name__ == "__main__":
    r = random.Random(1)
    for _ in range(12):
        print(make_sentence(r))
