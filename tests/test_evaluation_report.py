"""The results report: selection check, report generation on a small model and tiny phantom sets."""
import json

import numpy as np
import pytest
import torch

from medclipseg.evaluation.evaluate import coverage, modality_of, selection_correct
from medclipseg.evaluation.report import BenchmarkConfig, run_benchmark

SMALL = dict(width=32, heads=2, embed_dim=16, adapter_dim=8, patch_size=32, image_size=160)


def test_selection_rule():
    described = np.zeros((10, 10), bool)
    described[:, :4] = True
    other = np.zeros((10, 10), bool)
    other[:, 6:] = True
    assert selection_correct(described.copy(), described, [other])
    assert not selection_correct(described | other, described, [other])  # both covered: text ignored
    assert not selection_correct(other.copy(), described, [other])  # the wrong one
    half = described.copy()
    half[:5] = False
    assert coverage(half, described) == 0.5 and selection_correct(half, described, [other])


def test_modality_from_manifest_or_name():
    assert modality_of("x.png", {"modality": "brain_mri"}) == "brain_mri"
    assert modality_of("chest_xray_00012_t1.png", None) == "chest_xray"
    assert modality_of("scan.png", None) == "all"


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    from medclipseg.registry import build_tiny
    from medclipseg.weights.checkpoint import save_pretrained

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bench_weights")
    save_pretrained(build_tiny(**SMALL), root / "model")
    save_pretrained(build_tiny(**SMALL), root / "runs" / "reference" / "best")
    return root


def test_report_on_fresh_phantoms(small_weights, tmp_path):
    config = BenchmarkConfig(out=str(tmp_path / "results.md"), weights=str(small_weights / "model"),
                             runs=str(small_weights / "runs"), work=str(tmp_path / "work"), per_modality=1,
                             num_samples=2, secondary_samples=2, latency_repeats=1, progress=False, device="cpu")
    results = run_benchmark(config)
    report = (tmp_path / "results.md").read_text()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["in_distribution"]["overall"]["rows"] == results["in_distribution"]["overall"]["rows"] >= 5
    assert set(results["in_distribution"]["by_modality"]) == {
        "breast_ultrasound", "brain_mri", "dermoscopy", "colonoscopy", "chest_xray"}
    assert set(results["designs"]) == {"original", "contradictory", "missing_location", "overdescriptive",
                                       "underdescriptive"}
    assert "reference" in results["ablations"] and "shifted_dsc" in results["ablations"]["reference"]
    for heading in ("## Summary against the targets", "## Per modality", "## Prompt designs", "## Uncertainty quality",
                    "## Ablations", "## Latency", "## Reproduce"):
        assert heading in report
    assert 0.0 <= results["uncertainty"]["ece"] <= 1.0
    overall = results["in_distribution"]["overall"]
    assert 0.0 <= overall["nsd"] <= 1.0 and 0.0 <= overall["nsd_authors"] <= 1.0
    assert all("nsd_authors" in row for row in results["designs"].values())
    assert "NSD (authors) in distribution" in report and "| NSD | NSD (authors) |" in report


def test_report_on_a_given_layout_without_manifest(small_weights, tmp_path):
    """Any folder in the authors' layout works; rows without a manifest are grouped by name."""
    from medclipseg.phantoms import write_dataset

    data = tmp_path / "data"
    write_dataset(data, per_modality=1, seed=5, split_ratios=(0.0, 0.0, 1.0), modalities=("dermoscopy",))
    (data / "phantoms.json").unlink()
    config = BenchmarkConfig(out=str(tmp_path / "r.md"), weights=str(small_weights / "model"), data=str(data),
                             num_samples=2, secondary_samples=2, latency_repeats=1, progress=False, device="cpu")
    results = run_benchmark(config)
    assert "shifted" not in results and list(results["in_distribution"]["by_modality"]) == ["dermoscopy"]
    assert "DSC shifted" in (tmp_path / "r.md").read_text()


def test_report_of_older_results_without_the_authors_nsd():
    """A results.json written before the authors' NSD existed still renders, with n/a there."""
    from medclipseg.evaluation.report import render_markdown

    overall = {"rows": 2, "dsc": 0.8, "nsd": 0.7}
    results = {
        "config": {"data": "x", "num_samples": 2, "secondary_samples": 2, "runs": None},
        "model_id": "m", "seconds": 1.0,
        "machine": {"cpu": "cpu", "threads": 1, "torch": "2", "device": "cpu"},
        "in_distribution": {"overall": overall, "by_modality": {"all": overall}},
        "uncertainty": {"spearman_entropy_vs_error": 0.5, "pixel_auroc": 0.9, "ece": 0.01, "pixel_error_rate": 0.1},
        "designs": {"original": overall},
        "latency": {"plain_30": 0.4, "antithetic_30": 0.4, "adaptive_antithetic": 0.3},
    }
    report = render_markdown(results)
    assert "| all | 2 | 0.800 | 0.700 | n/a |" in report
