"""Fine-tuning on corrections (training.retrain), its recipe (training.config) and stage 2's job hooks."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from medclipseg.training.config import RetrainRecipe, TrainConfig, dump_recipe, load_recipe

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("A bright round lesion in the breast ultrasound image.",
           "One dark oval structure in the brain MRI image.")
# One epoch of at most two optimiser steps: enough to move the weights, cheap on a CPU.
QUICK = RetrainRecipe(epochs=1, batch_size=2, max_steps_per_epoch=2, lr=5e-3, min_lr=5e-3, eval_samples=2)


def make_examples(count: int, size: int = 64, seed: int = 0) -> list:
    """Grey images with one bright disc each; the disc is the mask (some images have none)."""
    from medclipseg.training.retrain import TrainingExample

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    examples = []
    for index in range(count):
        image = rng.integers(20, 70, (size, size), dtype=np.uint8)
        mask = np.zeros((size, size), bool)
        if index % 4 != 3:
            cy, cx, radius = rng.integers(18, size - 18, 2).tolist() + [int(rng.integers(6, 14))]
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
            image[mask] = 200
        examples.append(TrainingExample(np.repeat(image[..., None], 3, axis=2), mask, PROMPTS[index % 2],
                                        f"case{index}"))
    return examples


def leftovers(folder: Path, out_name: str) -> list:
    return [p.name for p in folder.iterdir() if p.name.startswith(f".{out_name}.")]


@pytest.fixture(scope="module")
def round_one(tmp_path_factory):
    from medclipseg.registry import load_model
    from medclipseg.training.retrain import fine_tune

    parent = tmp_path_factory.mktemp("round")
    reports = []
    # A LoadedModel as the parent: fine_tune trains from its source.
    out = fine_tune(load_model("demo", device="cpu"), make_examples(5), QUICK, parent / "v1",
                    on_progress=reports.append)
    return parent, out, reports


# --------------------------------------------------------------------------------------
# recipe


def test_recipe_toml_round_trip_and_file_is_the_defaults(tmp_path):
    recipe = RetrainRecipe(epochs=3, batch_size=4, lr=2e-3, min_lr=1e-5, seed=7, rotation_degrees=10.0,
                           rotation_probability=0.25, stochastic=False, max_steps_per_epoch=5, eval_samples=4,
                           threshold=0.4, nsd_tolerance=1.5)
    path = tmp_path / "recipe.toml"
    path.write_text(dump_recipe(recipe))
    assert load_recipe(path) == recipe
    assert load_recipe(ROOT / "configs" / "retrain" / "coffee-break.toml") == RetrainRecipe()


def test_recipe_refuses_unknown_keys_and_bad_values(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text("epochs = 2\nlearning_rate = 0.1\n")
    with pytest.raises(ValueError, match="unknown key 'learning_rate'.*known keys: epochs"):
        load_recipe(path)
    path.write_text("epochs = 0\n")
    with pytest.raises(ValueError, match="epochs must be a whole number of at least 1"):
        load_recipe(path)
    with pytest.raises(ValueError, match="threshold must lie strictly between 0 and 1"):
        RetrainRecipe(threshold=1.0)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        RetrainRecipe(lr=float("inf"))
    with pytest.raises(ValueError, match="not found"):
        load_recipe(tmp_path / "missing.toml")


def test_recipe_train_config_carries_every_training_field():
    recipe = RetrainRecipe(epochs=3, lr=2e-3, max_steps_per_epoch=4, stochastic=False)
    config = recipe.train_config(data="d", out="o", init="demo")
    assert isinstance(config, TrainConfig)
    assert (config.validate, config.resume, config.progress, config.init) == (False, False, False, "demo")
    shared = {f.name for f in dataclasses.fields(RetrainRecipe)} & {f.name for f in dataclasses.fields(TrainConfig)}
    assert shared >= {"epochs", "batch_size", "lr", "min_lr", "seed", "rotation_degrees", "rotation_probability",
                      "stochastic", "max_steps_per_epoch"}
    for name in shared:
        assert getattr(config, name) == getattr(recipe, name), name


# --------------------------------------------------------------------------------------
# fine_tune


def test_fine_tuned_model_loads_differs_and_records_its_round(round_one):
    from medclipseg.modeling.medclipseg import TRAINABLE_PREFIXES
    from medclipseg.registry import load_model

    parent_dir, out, _ = round_one
    parent, child = load_model("demo", device="cpu"), load_model(str(out), device="cpu")
    assert child.model_id != parent.model_id
    parent_state, child_state = parent.model.state_dict(), child.model.state_dict()
    changed = [k for k in child_state if not np.allclose(child_state[k].numpy(), parent_state[k].numpy())]
    assert changed and all(k.startswith(TRAINABLE_PREFIXES) for k in changed)  # towers stay frozen
    retrain = child.metadata["retrain"]
    assert retrain["examples"] == 5 and retrain["recipe"] == dataclasses.asdict(QUICK)
    assert child.metadata["init_model_id"] == parent.model_id
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert leftovers(parent_dir, "v1") == []  # scratch data and run removed


def test_progress_steps_rise_to_the_total(round_one):
    _, _, reports = round_one
    steps = [r.step for r in reports]
    assert steps == list(range(1, len(steps) + 1))
    assert reports[-1].step == reports[-1].total_steps == QUICK.epochs * QUICK.max_steps_per_epoch
    assert all(r.epochs == QUICK.epochs and math.isfinite(r.loss) for r in reports)
    assert reports[-1].eta_seconds == 0.0 and reports[-1].elapsed_seconds > 0


def test_cancel_leaves_no_loadable_model(tmp_path):
    from medclipseg.registry import load_model
    from medclipseg.training.retrain import TrainingCancelled, fine_tune
    from medclipseg.weights.sources import WeightsSourceError

    calls = []
    with pytest.raises(TrainingCancelled):
        fine_tune("demo", make_examples(4), QUICK, tmp_path / "v2", should_stop=lambda: calls.append(1) or True)
    assert len(calls) == 1  # stopped after the first step
    assert not (tmp_path / "v2").exists() and leftovers(tmp_path, "v2") == []
    with pytest.raises(WeightsSourceError):
        load_model(str(tmp_path / "v2"))


def test_fine_tune_refuses_bad_inputs_in_words(tmp_path):
    from medclipseg.training.retrain import TrainingExample, fine_tune

    with pytest.raises(ValueError, match="at least one corrected case"):
        fine_tune("demo", [], QUICK, tmp_path / "a")
    image = np.zeros((40, 50, 3), np.uint8)
    bad = TrainingExample(image, np.zeros((50, 40), bool), PROMPTS[0], "swapped")
    with pytest.raises(ValueError, match=r"mask of example 1 \(swapped\) is 50x40.*image is 40x50"):
        fine_tune("demo", [bad], QUICK, tmp_path / "a")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        fine_tune("demo", make_examples(1), QUICK, tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


# --------------------------------------------------------------------------------------
# stage 2 hooks


def test_stage2_cancel_keeps_the_last_complete_epoch(tmp_path):
    import torch

    from medclipseg.training.retrain import _write_scratch_dataset
    from medclipseg.training.stage2 import TrainingCancelled, train

    _write_scratch_dataset(make_examples(4), tmp_path / "data")
    config = RetrainRecipe(epochs=2, batch_size=2, max_steps_per_epoch=2).train_config(
        data=str(tmp_path / "data"), out=str(tmp_path / "run"), init="demo")
    seen = []
    with pytest.raises(TrainingCancelled):
        train(config, on_progress=seen.append, should_stop=lambda: len(seen) == 3)  # first step of epoch 2
    assert [(r.step, r.epoch) for r in seen] == [(1, 1), (2, 1), (3, 2)]
    state = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 1
    assert json.loads((tmp_path / "run" / "last" / "config.json").read_text())["metadata"]["epoch"] == 1
    assert not list((tmp_path / "run").glob("*.tmp"))


# --------------------------------------------------------------------------------------
# score_examples


def numpy_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(pred, truth).sum() / total


def numpy_spearman(x, y) -> float:
    """Pearson correlation of average ranks (ties share the mean of their positions)."""
    def ranks(values):
        values = np.asarray(values, float)
        order = np.argsort(values, kind="stable")
        ranked = np.empty(len(values))
        ranked[order] = np.arange(1, len(values) + 1)
        for value in np.unique(values):
            ranked[values == value] = ranked[values == value].mean()
        return ranked
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def test_score_examples_matches_independent_dice_and_spearman(round_one):
    from medclipseg.inference.predictor import Predictor
    from medclipseg.registry import load_model
    from medclipseg.training.retrain import SCORING_SEED, score_examples

    _, out, _ = round_one
    examples = make_examples(6, seed=3)
    loaded = load_model(str(out), device="cpu")
    reports = []
    gold = score_examples(loaded, examples, num_samples=2, threshold=0.5, nsd_tolerance=2.0, device="cpu",
                          on_progress=reports.append)
    predictor = Predictor.from_loaded(loaded, device="cpu")
    expected = []
    for example in examples:
        mask = predictor.predict(example.image_bgr, example.prompt, num_samples=2, seed=SCORING_SEED,
                                 channel_order="bgr").mask
        expected.append(numpy_dice(mask, example.mask))
    assert [c["dsc"] for c in gold.per_case] == pytest.approx(expected, abs=1e-12)
    assert gold.dsc == pytest.approx(np.mean(expected), abs=1e-12)
    assert gold.cases == 6 and gold.model_id == loaded.model_id
    assert [c["name"] for c in gold.per_case] == [e.name for e in examples]
    scores, errors = [c["score"] for c in gold.per_case], [1 - c["dsc"] for c in gold.per_case]
    if np.ptp(scores) > 0 and np.ptp(errors) > 0:
        assert gold.uncertainty_spearman == pytest.approx(numpy_spearman(scores, errors), abs=1e-12)
    else:
        assert gold.uncertainty_spearman is None
    assert [r.case for r in reports] == list(range(1, 7)) and reports[-1].eta_seconds == 0.0
    again = score_examples(loaded, examples, num_samples=2, device="cpu")
    assert again.per_case == gold.per_case  # the fixed seed makes a version's score reproducible


def test_spearman_is_none_when_undefined_and_matches_ranks_otherwise():
    from medclipseg.training.retrain import _spearman_or_none

    assert _spearman_or_none([0.1, 0.2], [0.3, 0.1]) is None
    assert _spearman_or_none([0.1, 0.2, 0.3], [0.5, 0.5, 0.5]) is None
    x, y = [0.3, 0.1, 0.1, 0.9, 0.5], [0.2, 0.4, 0.1, 0.8, 0.8]
    assert _spearman_or_none(x, y) == pytest.approx(numpy_spearman(x, y), abs=1e-12)


def test_score_examples_uncertainty_key_choices(round_one):
    from medclipseg.training.retrain import score_examples

    _, out, _ = round_one
    examples = make_examples(3, seed=5)
    by_key = score_examples(str(out), examples, num_samples=1, device="cpu", uncertainty_key="foreground_pixels")
    by_function = score_examples(str(out), examples, num_samples=1, device="cpu",
                                 uncertainty_key=lambda prediction: float(prediction.mask.sum()))
    assert [c["score"] for c in by_function.per_case] == [c["score"] for c in by_key.per_case]
    assert by_function.uncertainty_key == "<lambda>"
    with pytest.raises(ValueError, match="Unknown uncertainty key 'nope'.*mean_entropy_foreground"):
        score_examples(str(out), examples[:1], num_samples=1, device="cpu", uncertainty_key="nope")
