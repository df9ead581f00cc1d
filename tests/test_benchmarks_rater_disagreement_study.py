"""benchmarks/rater_disagreement_study.py: the per-case measures on cases whose answer is known."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from app_support import ROOT


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("rater_study", ROOT / "benchmarks" / "rater_disagreement_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entropy_exactly_on_the_disputed_pixels_scores_one(study):
    a = np.zeros((30, 30), bool)
    a[5:20, 5:20] = True
    b = np.zeros((30, 30), bool)
    b[8:23, 8:23] = True
    disputed = a ^ b
    probability = np.where(a | b, 0.9, 0.05)
    measures = study.case_measures(probability, disputed.astype(float), [a, b])
    assert measures["auroc"] == pytest.approx(1.0) and measures["pixel_spearman"] == pytest.approx(1.0)
    assert measures["disputed_pixels"] == int(disputed.sum())
    assert measures["disagreement"] == pytest.approx(1 - 2 * (a & b).sum() / (a.sum() + b.sum()))
    inverted = study.case_measures(probability, (~disputed).astype(float), [a, b])
    assert inverted["auroc"] == pytest.approx(0.0)


def test_unanimous_raters_have_no_auroc(study):
    a = np.zeros((10, 10), bool)
    a[2:5, 2:5] = True
    measures = study.case_measures(a.astype(float), np.random.default_rng(0).random((10, 10)), [a, a])
    assert measures["auroc"] is None and measures["disagreement"] == 0.0
