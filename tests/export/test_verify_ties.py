"""The export gate counts a different label at an exact or fp32-level score tie as equal (and says so)."""

from __future__ import annotations

import numpy as np

from semask_deploy.export.verify import TOLERANCES, VerifyCase, VerifyResult, resolve_ties


def test_resolve_ties_takes_the_exported_label_only_at_ties():
    scores = np.zeros((1, 3, 2, 2), np.float32)
    scores[0, :, 0, 0] = [5.0, 5.0, 1.0]  # exact tie of classes 0 and 1
    scores[0, :, 0, 1] = [5.0, 4.0, 1.0]  # a clear winner: 0
    scores[0, :, 1, 0] = [1.0, 3.0, 3.0 - 1e-6]  # within 1e-5 of the largest magnitude (5): a tie
    scores[0, :, 1, 1] = [0.0, 0.0, 2.0]
    exported = np.array([[[1, 1], [2, 2]]], np.int32)
    got = resolve_ties(exported, scores)
    np.testing.assert_array_equal(got, [[[1, 0], [2, 2]]])  # (0, 1) stays PyTorch's 0: not a tie


def test_report_gives_both_numbers():
    case = VerifyCase([1, 3, 8, 8], 1e-6, 1e-7, 1e-6, label_agreement=1.0, miou_agreement=1.0, ok=True,
                      seconds_onnx=0.1, seconds_torch=0.1, labels_equal=0.96)
    text = VerifyResult("fp32", TOLERANCES["fp32"], [case]).format()
    assert "labels 96.000 % equal (100.000 % counting score ties)" in text
    case.labels_equal = 1.0
    assert "labels 100.000 % equal, " in VerifyResult("fp32", TOLERANCES["fp32"], [case]).format()
