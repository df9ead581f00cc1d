"""The shipped demo: offline loading, a real segmentation of unseen phantoms, the weights switch."""
import hashlib
import time

import numpy as np
import pytest

from medclipseg.phantoms import MODALITIES, generate_phantom
from medclipseg.evaluation.metrics import dice_score
from medclipseg.inference.predictor import Predictor
from medclipseg.registry import demo_weights_dir
from medclipseg.weights.sources import WeightsSourceError


@pytest.fixture(scope="module")
def demo():
    return Predictor.from_pretrained("demo", device="cpu")


def test_demo_files_and_card():
    weights = demo_weights_dir() / "model.safetensors"
    assert weights.stat().st_size < 50e6
    card = (demo_weights_dir() / "README.md").read_text()
    assert "Not for clinical use" in card
    assert hashlib.sha256(weights.read_bytes()).hexdigest() in card


def test_demo_is_the_default_without_setting(demo, monkeypatch):
    monkeypatch.delenv("MEDCLIPSEG_WEIGHTS", raising=False)
    predictor = Predictor.from_pretrained(device="cpu")
    assert predictor.model_id == demo.model_id and predictor.model_id.startswith("demo-tiny@")


def test_demo_segments_unseen_phantoms(demo):
    """Seeds far from the training seed; every modality; single-target images."""
    scores = []
    for index, modality in enumerate(MODALITIES):
        for seed in (777001 + index, 777101 + index):
            phantom = generate_phantom(modality, seed, num_targets=1)
            row = phantom.rows()[0]
            prediction = demo.predict(phantom.image, row["prompts"]["original"], num_samples=8, seed=0,
                                      channel_order="bgr")
            scores.append(dice_score(prediction.mask, row["mask"]))
    assert np.mean(scores) > 0.7, scores


def test_demo_text_selects_the_target(demo):
    """On a two-target image, the two selection prompts give two different masks, each on its target."""
    phantom = generate_phantom("dermoscopy", 424242, num_targets=2)
    rows = phantom.rows()
    assert len(rows) == 2
    masks = [demo.predict(phantom.image, r["prompts"]["original"], num_samples=8, seed=0, channel_order="bgr").mask
             for r in rows]
    for mask, row in zip(masks, rows):
        assert dice_score(mask, row["mask"]) > dice_score(mask, rows[1 - rows.index(row)]["mask"])


def test_weights_setting_switches_to_a_folder(tmp_path, monkeypatch, small_tiny_model):
    from medclipseg.weights.checkpoint import save_pretrained

    save_pretrained(small_tiny_model, tmp_path / "other")
    monkeypatch.setenv("MEDCLIPSEG_WEIGHTS", str(tmp_path / "other"))
    predictor = Predictor.from_pretrained(device="cpu")
    # Named by content, not by path.
    assert predictor.model_id.startswith("tiny@") and str(tmp_path) not in predictor.model_id
    assert predictor.model.config.vision.width == small_tiny_model.config.vision.width


def test_weights_setting_to_the_hub_fails_fast_offline(monkeypatch):
    """Where the hub is unreachable (these machines), an hf:// setting is a clear, quick error."""
    from medclipseg.weights import sources

    if sources.hub_reachable():
        pytest.skip("the hub is reachable here")
    monkeypatch.setenv("MEDCLIPSEG_WEIGHTS", "hf://TahaKoleilat/MedCLIPSeg/BUSI/model.pth")
    started = time.perf_counter()
    with pytest.raises(WeightsSourceError):
        Predictor.from_pretrained(device="cpu")
    assert time.perf_counter() - started < 10
