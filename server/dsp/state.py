"""The denoiser's signal state, one row per channel, typed: every entry and its array in one place.

Each piece of the signal path (``Stft``, ``NoiseTracker``, ``OmLsaGain``, ``GainModel``) keeps its
recursive state in a *row state*: arrays whose first axis is the row (one row per channel of one or
many streams), so the same code runs one hop of one channel, a second of a file, or one hop of a
hundred streams at once. A piece's ``init_state(state, rows)`` fills its own entries, and only that
piece reads them. The entries are declared here, in one line each as speexdsp's ``preprocess.c``
documents its state, so mypy checks every key and the array behind it. An entry of a piece that a
denoiser does not run (the model's, with no weights) is absent.

A row state is a ``dict`` at run time (a ``TypedDict``): the pieces' ``init_state(state, rows)``
signatures, and their callers in ``training/`` and the tests, stay as they were. The functions
below are the only code that treats it as a collection of arrays, for :class:`DenoiserPool`, which
owns the rows of many streams: grow it, reset rows to their initial values, select rows.
"""

from __future__ import annotations

from typing import Any, TypedDict, cast

import numpy as np
import numpy.typing as npt

__all__ = ["RowState", "arrays", "copy_rows", "select"]

_F = npt.NDArray[np.floating[Any]]  # float64 for the signal path, the estimators' dtype elsewhere
_I = npt.NDArray[np.int64]
_C = npt.NDArray[np.complexfloating[Any, Any]]

# Functional form: the keys carry the piece's name, and "model.past_lo" is the model's own spelling.
RowState = TypedDict("RowState", {
    "stft.history": _F,       # (rows, frame_len - hop) the last input samples, float64
    "stft.ola": _F,           # (rows, hop) second half of the previous synthesis frame, float64
    "stft.seen": _I,          # (rows,) input samples seen, saturating at frame_len (fill correction)
    "noise.psd": _F,          # (rows, bins) noise PSD estimate lambda_N per bin
    "noise.spp_smooth": _F,   # (rows, bins) recursive mean of the speech presence probability
    "noise.frames": _I,       # (rows,) frames seen, saturating after the start-up average
    "gain.clean_snr": _F,     # (rows, bins) G_H1^2 * gamma of the last frame (decision-directed SNR)
    "model.h1": _F,           # (rows, gru1 hidden) first GRU's hidden state
    "model.h2": _F,           # (rows, gru2 hidden) second GRU's hidden state
    "model.past_lo": _C,      # (rows, df_taps - 1, df_bins) deep filter: last frames' low bins, newest last
    "pitch.history": _F,      # (rows, frame_len - hop + max lag) the last input samples (periodicity), float64
    "min_gain": _F,           # (rows,) max(floor, attenuation limit); 1.0 = pass-through (bypass)
}, total=False)


_Arrays = dict[str, npt.NDArray[Any]]  # built once: a subscripted alias costs microseconds per call


def arrays(state: RowState) -> _Arrays:
    """The entries as a plain mapping, for code that treats every entry alike."""
    return cast(_Arrays, state)


def select(state: RowState, rows: slice | npt.NDArray[np.intp]) -> RowState:
    """The state of ``rows``: views for a slice, copies for an index array (then write back with
    :func:`copy_rows`)."""
    return cast(RowState, {k: v[rows] for k, v in arrays(state).items()})


def copy_rows(dst: RowState, rows: slice | npt.NDArray[np.intp], src: RowState) -> None:
    """``dst[rows] = src`` for every entry (``src`` has as many rows as ``rows`` selects)."""
    src_arrays = arrays(src)
    for k, v in arrays(dst).items():
        v[rows] = src_arrays[k]
