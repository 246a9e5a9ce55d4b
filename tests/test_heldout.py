"""The held-out split (training/heldout.py): the training recipe can draw none of the evaluation
set's voices, sentences or noise seeds, and the committed evaluation set uses only those."""

from __future__ import annotations

import random
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "training"))

import heldout  # noqa: E402
import make_data  # noqa: E402


def test_training_voice_lists_leave_out_the_heldout_voices() -> None:
    assert not set(make_data.FESTIVAL_VOICES) & set(heldout.FESTIVAL_VOICES)
    assert not set(make_data.FLITE_VOICES) & set(heldout.FLITE_VOICES)
    assert not set(make_data.ESPEAK_VARIANTS) & set(heldout.ESPEAK_VARIANTS)
    # every voice name the espeak draw can build is a training one
    voices = [lang + var for lang in make_data.ESPEAK_LANGS for var in make_data.ESPEAK_VARIANTS]
    assert voices and not any(heldout.is_heldout_espeak(v) for v in voices)
    assert heldout.is_heldout_espeak("en-gb-x-rp+f4") and not heldout.is_heldout_espeak("en-us+f3")


def test_training_sentences_are_never_heldout_ones() -> None:
    rng = random.Random(0)
    drawn = [make_data.make_paragraph(rng, 1) for _ in range(3000)]
    assert len(set(drawn)) > 2900  # the draw really varies
    assert not any(heldout.is_heldout_sentence(s) for s in drawn)
    assert heldout.is_heldout_sentence(heldout.SENTENCES[0].upper().rstrip("."))
    assert len({heldout.normalise(s) for s in heldout.SENTENCES}) == len(heldout.SENTENCES)


def test_training_noise_seed_stays_below_the_heldout_seeds() -> None:
    assert make_data.NOISE_SEED < heldout.NOISE_SEED_MIN
    with pytest.raises(SystemExit, match="evaluation set"):
        make_data.build_noise(ROOT, heldout.NOISE_SEED_MIN, [])


def test_the_committed_set_uses_only_heldout_material() -> None:
    import csv

    rows = []
    for rate in ("16k", "8k", "48k"):
        with open(ROOT / "evalset" / rate / "noisy" / "manifest.csv", newline="") as fh:
            rows += [(rate, row) for row in csv.DictReader(fh)]
        names = {p.name for p in (ROOT / "evalset" / rate / "noisy").glob("*.flac")}
        assert names == {p.name for p in (ROOT / "evalset" / rate / "clean").glob("*.flac")}
    assert len(rows) == 42 + 8 + 5
    for rate, row in rows:
        engine, voice = row["voice"].split(":")[:2]
        held = {"festival": voice in heldout.FESTIVAL_VOICES, "flite": voice in heldout.FLITE_VOICES,
                "espeak-ng": heldout.is_heldout_espeak(voice)}[engine]
        assert held, (rate, row)
        assert int(row["sentence"]) < heldout.TARGET_SENTENCES
        assert row["noise_type"] == "none" or int(row["noise_seed"]) >= heldout.NOISE_SEED_MIN, (rate, row)
