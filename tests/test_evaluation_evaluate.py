"""evaluate_samples (the one evaluation loop) and the latency helper, with a stand-in predictor."""
import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from medclipseg.datasets.layout import Sample
from medclipseg.evaluation.evaluate import evaluate_samples, write_results
from medclipseg.evaluation.latency import median_predict_seconds
from medclipseg.evaluation.metrics import PixelUncertaintyStats, normalized_surface_dice


class HalfSizePredictor:
    """Predicts the truth's square at half resolution, so every score needs the resize."""

    def __init__(self, mask):
        self.mask = mask
        self.calls = []
        self.device = SimpleNamespace(type="cpu")

    def predict(self, image, prompt, **options):
        self.calls.append(options)
        small = cv2.resize(self.mask.astype(np.uint8), None, fx=0.5, fy=0.5,
                           interpolation=cv2.INTER_NEAREST).astype(bool)
        probability = np.where(small, 0.9, 0.1).astype(np.float32)
        return SimpleNamespace(mask=small, probability=probability, entropy=np.full(small.shape, 0.3, np.float32),
                               seconds=0.01, scores={"mean_entropy": 0.3, "mutual_information_mean": 0.1,
                                                     "boundary_fraction": 0.5})


@pytest.fixture
def one_sample(tmp_path):
    truth = np.zeros((32, 40), bool)
    truth[8:20, 10:30] = True
    (tmp_path / "label").mkdir()
    cv2.imwrite(str(tmp_path / "label" / "case_01.png"), truth.astype(np.uint8) * 255)
    return truth, Sample(image_path=tmp_path / "case_01.png", mask_path=tmp_path / "label" / "case_01.png",
                         prompt="a box", image_name="case_01.png")


def test_rows_hold_both_nsds_and_the_uncertainty_scores(one_sample, tmp_path):
    truth, sample = one_sample
    predictor = HalfSizePredictor(truth)
    stats = PixelUncertaintyStats()
    results = evaluate_samples(predictor, [sample], num_samples=3, seed=4, progress=False, pixel_stats=stats)
    row = results["per_image"][0]
    assert row["dsc"] == 1.0 and row["nsd"] == 1.0 and row["nsd_authors"] == 1.0
    assert row["modality"] == "case" and row["ground_truth"] == "case_01.png"
    assert {"mean_entropy", "mutual_information_mean"} <= set(row) and "boundary_fraction" not in row
    assert results["summary"] == {"images": 1, "mean_dsc": 1.0, "mean_nsd": 1.0, "mean_nsd_authors": 1.0,
                                  "seconds": results["summary"]["seconds"]}
    assert predictor.calls == [{"num_samples": 3, "threshold": 0.5, "seed": 4}]
    assert stats.pixels == truth.size and stats.error_rate() == 0.0
    path = write_results(results, tmp_path / "out" / "results.json")
    assert json.loads(path.read_text())["per_image"][0]["nsd_authors"] == 1.0


def test_authors_nsd_differs_from_contour_nsd_per_row(one_sample):
    truth, sample = one_sample
    shifted = np.roll(truth, 4, axis=1)  # even: survives the half-size round trip
    row = evaluate_samples(HalfSizePredictor(shifted), [sample], progress=False)["per_image"][0]
    assert row["nsd"] == pytest.approx(normalized_surface_dice(shifted, truth))
    assert row["nsd_authors"] == pytest.approx(normalized_surface_dice(shifted, truth, rule="authors"))
    assert row["nsd"] != pytest.approx(row["nsd_authors"])


def test_selection_rows_from_the_manifest(one_sample):
    truth, sample = one_sample
    other = np.zeros_like(truth)
    other[22:30, 2:8] = True
    targets = sample.mask_path.parent.parent / "targets"
    targets.mkdir()
    cv2.imwrite(str(targets / "other.png"), other.astype(np.uint8) * 255)
    manifest = {("case_01.png", "case_01.png"): {"modality": "dermoscopy", "selection": True,
                                                  "other_targets": ["other.png"]}}
    row = evaluate_samples(HalfSizePredictor(truth), [sample], progress=False, manifest=manifest)["per_image"][0]
    assert row["modality"] == "dermoscopy" and row["selection_correct"] is True
    row = evaluate_samples(HalfSizePredictor(truth | other), [sample], progress=False,
                           manifest=manifest)["per_image"][0]
    assert row["selection_correct"] is False


def test_no_samples_summary():
    summary = evaluate_samples(HalfSizePredictor(np.zeros((8, 8), bool)), [], progress=False)["summary"]
    assert summary["images"] == 0 and np.isnan(summary["mean_dsc"]) and np.isnan(summary["mean_nsd_authors"])


def test_median_predict_seconds_warms_up_then_times_each_call():
    predictor = HalfSizePredictor(np.ones((8, 8), bool))
    seconds = median_predict_seconds(predictor, np.zeros((8, 8, 3), np.uint8), "a box", num_samples=5, repeats=3,
                                     antithetic=True)
    assert len(predictor.calls) == 4  # one warm-up, three timed
    assert all(call == {"num_samples": 5, "seed": 0, "channel_order": "bgr", "antithetic": True}
               for call in predictor.calls)
    assert 0.0 <= seconds < 1.0
