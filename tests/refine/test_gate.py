"""The do-no-harm gate: changes far from the input's boundary or unsure are undone."""

from __future__ import annotations

import numpy as np

from finecut.refine.inference import gate_changes


def _case():
    coarse = np.zeros((100, 100), bool)
    coarse[30:70, 30:70] = True
    prob = coarse.astype(np.float32)
    prob[30:70, 70:73] = 0.9  # the object grows by 3 px next to the input's boundary
    prob[5:10, 85:90] = 0.95  # a blob far from it
    prob[45:55, 45:55] = 0.45  # an unsure hole in the middle
    return prob, coarse


def test_no_gate_changes_nothing() -> None:
    prob, coarse = _case()
    assert np.array_equal(gate_changes(prob, coarse, 0, 0), prob)


def test_reach_undoes_changes_far_from_the_input_boundary() -> None:
    prob, coarse = _case()
    out = gate_changes(prob, coarse, reach=6, confidence=0)
    assert (out[30:70, 70:73] == 0.9).all()  # near: kept
    assert (out[5:10, 85:90] == 0).all()  # far: the input's value
    assert (out[45:55, 45:55] == 1).all()  # the hole is 15 px inside: undone


def test_confidence_undoes_unsure_changes_only() -> None:
    prob, coarse = _case()
    out = gate_changes(prob, coarse, reach=0, confidence=0.2)
    assert (out[45:55, 45:55] == 1).all()
    assert (out[5:10, 85:90] == 0.95).all() and (out[30:70, 70:73] == 0.9).all()
    # unchanged pixels keep the refiner's soft value
    prob[20, 20] = 0.3
    assert gate_changes(prob, coarse, 6, 0.2)[20, 20] == np.float32(0.3)
