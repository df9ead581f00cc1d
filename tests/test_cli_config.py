"""Config files and defaults of `medclipseg train` / `pretrain`: the recipe in configs/demo, the
order files < command line, and the errors for unknown keys and wrong types."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from medclipseg.cli import build_parser, main, resolve_config
from medclipseg.training.stage1 import PretrainConfig
from medclipseg.training.stage2 import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "demo"
# Settings that name places or the machine, not the recipe.
RUN_SPECIFIC = {"data", "out", "init", "device", "resume", "progress", "validate", "max_steps_per_epoch",
                "max_steps"}


def _train(*argv):
    args = build_parser().parse_args(["train", *argv])
    return resolve_config(args, TrainConfig, "train")


def _pretrain(*argv):
    args = build_parser().parse_args(["pretrain", *argv])
    return resolve_config(args, PretrainConfig, "pretrain")


def test_defaults_are_the_dataclass_defaults():
    config = _train("--data", "d", "--out", "o")
    assert config == TrainConfig(data="d", out="o")
    assert _pretrain("--data", "d", "--out", "o") == PretrainConfig(data="d", out="o")


def test_options_set_their_fields():
    config = _train("--data", "d", "--out", "o", "--epochs", "3", "--batch-size", "5", "--lr", "0.01",
                    "--min-lr", "0.001", "--seed", "9", "--pct", "25", "--design", "contradictory", "--init", "demo",
                    "--max-steps-per-epoch", "4", "--no-validate", "--no-resume", "--device", "cpu",
                    "--contrastive-weight", "0", "--means-only", "--head-only", "--backbone", "tiny")
    assert (config.epochs, config.batch_size, config.lr, config.min_lr, config.seed, config.pct, config.design,
            config.init, config.max_steps_per_epoch, config.device) == (3, 5, 0.01, 0.001, 9, 25, "contradictory",
                                                                        "demo", 4, "cpu")
    assert config.validate is False and config.resume is False and config.stochastic is False
    assert config.contrastive_weight == 0.0 and config.fusion_layers == []
    pre = _pretrain("--data", "d", "--out", "o", "--epochs", "2", "--batch-size", "8", "--lr", "0.1",
                    "--dense-weight", "0.5", "--seed", "4", "--max-steps", "3", "--model", '{"width": 64}',
                    "--device", "cpu")
    assert (pre.epochs, pre.batch_size, pre.lr, pre.dense_weight, pre.seed, pre.max_steps, pre.device) == (
        2, 8, 0.1, 0.5, 4, 3, "cpu")


def test_stage2_recipe_is_what_trained_the_demo_model():
    recorded = json.loads((ROOT / "assets" / "demo-tiny" / "config.json").read_text())["metadata"]["train_config"]
    config = dataclasses.asdict(_train("--config", str(RECIPE / "stage2.toml"), "--data", "d", "--out", "o"))
    recipe = {key: value for key, value in recorded.items() if key not in RUN_SPECIFIC}
    assert {key: config[key] for key in recipe} == recipe


def test_stage1_recipe_is_the_documented_one():
    config = _pretrain("--config", str(RECIPE / "stage1.toml"), "--data", "d", "--out", "o")
    card = (ROOT / "assets" / "demo-tiny" / "README.md").read_text()
    assert (config.epochs, config.batch_size, config.lr, config.seed, config.dense_weight) == (20, 64, 1e-3, 0, 1.0)
    assert (f"{config.epochs} epochs, batch {config.batch_size}, AdamW lr {config.lr}, seed {config.seed}" in card)


@pytest.mark.parametrize("name, changed", [
    ("reference", {}),
    ("means_only", {"stochastic": False}),
    ("no_contrastive", {"contrastive_weight": 0.0}),
    ("head_only", {"fusion_layers": []}),
])
def test_each_ablation_changes_one_thing_at_the_ablation_budget(name, changed):
    base = dataclasses.asdict(_train("--config", str(RECIPE / "stage2.toml"), "--data", "d", "--out", "o"))
    ablation = dataclasses.asdict(_train("--config", str(RECIPE / "stage2.toml"),
                                         "--config", str(RECIPE / "ablations" / f"{name}.toml"),
                                         "--data", "d", "--out", "o"))
    differences = {key: value for key, value in ablation.items() if base[key] != value}
    assert differences == {"epochs": 2, **changed}


def test_command_line_wins_over_files_and_later_files_win(tmp_path):
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text('epochs = 7\nlr = 0.5\ndata = "from_file"\nout = "run"\n')
    second.write_text("lr = 2\n")  # an integer where a float is expected is fine
    config = _train("--config", str(first), "--config", str(second), "--epochs", "1")
    assert (config.epochs, config.lr, config.data, config.out) == (1, 2.0, "from_file", "run")
    assert isinstance(config.lr, float)


def test_unknown_key_is_named(tmp_path, capsys):
    bad = tmp_path / "typo.toml"
    bad.write_text("epoch = 3\n")
    with pytest.raises(ValueError, match=r"typo\.toml: unknown key 'epoch' for train; known keys: data, out"):
        _train("--config", str(bad), "--data", "d", "--out", "o")
    assert main(["train", "--config", str(bad), "--data", "d", "--out", "o"]) == 2
    assert "unknown key 'epoch'" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("epochs = 2.5\n", "'epochs' must be int"),
    ("epochs = true\n", "'epochs' must be int"),
    ("lr = \"fast\"\n", "'lr' must be float"),
    ("stochastic = 1\n", "'stochastic' must be bool"),
    ("fusion_layers = 3\n", "'fusion_layers' must be list"),
    ("epochs = \n", "not a valid TOML file"),
])
def test_wrong_values_are_refused(tmp_path, text, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message):
        _train("--config", str(bad), "--data", "d", "--out", "o")


def test_missing_file_and_missing_required_settings(tmp_path):
    with pytest.raises(ValueError, match="config file .* not found"):
        _train("--config", str(tmp_path / "nope.toml"), "--data", "d", "--out", "o")
    with pytest.raises(ValueError, match=r"give --data \(or set 'data' in a --config file\)"):
        _train("--out", "o")
    with pytest.raises(ValueError, match="give --out"):
        _pretrain("--data", "d")


def test_pretrain_model_overrides_from_file_and_command_line(tmp_path, capsys):
    recipe = tmp_path / "stage1.toml"
    recipe.write_text("[model]\nwidth = 64\nlayers = 2\n")
    assert _pretrain("--config", str(recipe), "--data", "d", "--out", "o").model == {"width": 64, "layers": 2}
    assert main(["pretrain", "--data", "d", "--out", "o", "--model", "[1]"]) == 2
    assert "--model must be a JSON object" in capsys.readouterr().err
