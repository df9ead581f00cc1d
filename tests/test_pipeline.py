"""End to end on a tiny configuration: phantoms -> stage 1 -> stage 2 -> evaluation on held-out phantoms.

Everything is real (files in the authors' layout, the packaged MiniLM, our safetensors format);
only the sizes are shrunk so that it runs in well under two minutes on a 2-core CPU.
"""
import json

import numpy as np
import pytest
import torch

from medclipseg.cli import main

# The demo's layout (160 px, 10x10 patches) with a narrower ViT, on the real MiniLM text tower.
SMALL = dict(width=96, heads=2, embed_dim=64, adapter_dim=32)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    data, held_out = root / "phantoms", root / "held_out"
    # Two modalities, one target per image: enough signal for a few minutes' worth of CPU seconds.
    common = ["--modalities", "dermoscopy,brain_mri", "--target-counts", "0,1,0,0"]
    assert main(["phantoms", "--out", str(data), "--per-modality", "30", "--seed", "11", *common]) == 0
    assert main(["phantoms", "--out", str(held_out), "--per-modality", "5", "--seed", "12",
                 "--splits", "0,0,1", *common]) == 0
    torch.manual_seed(0)
    assert main(["pretrain", "--data", str(data), "--out", str(root / "stage1"), "--epochs", "4",
                 "--batch-size", "16", "--lr", "2e-3", "--model", json.dumps(SMALL)]) == 0
    assert main(["train", "--data", str(data), "--init", str(root / "stage1"), "--out", str(root / "stage2"),
                 "--epochs", "8", "--batch-size", "8", "--lr", "1e-3", "--min-lr", "2e-4", "--seed", "1"]) == 0
    return root, held_out


def test_stage1_loss_falls(pipeline):
    root, _ = pipeline
    history = json.loads((root / "stage1" / "pretrain_history.json").read_text())
    assert history[-1]["loss"] < history[0]["loss"]


def test_stage2_loss_falls_and_checkpoints_load(pipeline):
    root, _ = pipeline
    config = json.loads((root / "stage2" / "last" / "config.json").read_text())
    history = config["metadata"]["history"]
    assert history[-1]["loss"] < 0.9 * history[0]["loss"]
    assert config["model"]["vision"]["width"] == SMALL["width"]  # the stage-1 backbone carried over


def test_trained_model_beats_untrained_on_held_out_phantoms(pipeline, tmp_path):
    from medclipseg.registry import build_tiny
    from medclipseg.weights.checkpoint import save_pretrained

    root, held_out = pipeline
    torch.manual_seed(0)
    save_pretrained(build_tiny(**SMALL), tmp_path / "untrained")
    scores = {}
    for name, weights in (("trained", root / "stage2" / "best"), ("untrained", tmp_path / "untrained")):
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", "--data", str(held_out), "--weights", str(weights), "--num-samples", "4",
                     "--out", str(out)]) == 0
        scores[name] = json.loads(out.read_text())["summary"]["mean_dsc"]
    assert scores["trained"] > scores["untrained"] + 0.1, scores
    assert np.isfinite(scores["trained"])
