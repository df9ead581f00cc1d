"""Tests for medclipseg.weights.checkpoint: our safetensors format and the authors' `.pth` files."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from medclipseg.weights.checkpoint import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    CheckpointMismatchError,
    extract_state_dict,
    load_state_dict_strict,
    read_config,
    read_torch_checkpoint,
    save_pretrained,
)

EXTERNAL_PREFIX = "text_model.transformer."


def load_folder(folder):
    """Our folders load through the one load path."""
    from medclipseg.registry import load_model

    return load_model(str(folder), device="cpu").model


def _perturb_trainable(model, seed=1):
    """Move trainable weights away from their initialisation, so a round trip proves something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn(param.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def pretrained_small_tiny(small_tiny_factory):
    """Built with the packaged MiniLM weights, as loading rebuilds the external tower."""
    return _perturb_trainable(small_tiny_factory(pretrained_text=True)).eval()


@pytest.fixture(scope="module")
def model_inputs(minilm_tokenizer):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, 224, 224, generator=generator)
    return pixels, minilm_tokenizer(["a round polyp in the lower left"], mode="exact")


def _deterministic_logits(model, inputs):
    with torch.no_grad():
        return model.forward_samples(*inputs, 1, stochastic=False)


# -- our format ----------------------------------------------------------------------------------

def test_round_trip_is_bit_exact(tmp_path, pretrained_small_tiny, model_inputs):
    folder = save_pretrained(pretrained_small_tiny, tmp_path / "model", metadata={"note": "test"})
    stored = load_file(str(folder / WEIGHTS_FILE))
    loaded = load_folder(folder)
    original_state, loaded_state = pretrained_small_tiny.state_dict(), loaded.state_dict()
    assert set(loaded_state) == set(original_state)
    for key, tensor in stored.items():
        assert torch.equal(tensor, original_state[key]), key
    # Stored tensors come back bit-exact; the external tower is refilled from the package, identically.
    for key in original_state:
        assert torch.equal(loaded_state[key], original_state[key]), key
    assert torch.equal(_deterministic_logits(loaded, model_inputs),
                       _deterministic_logits(pretrained_small_tiny, model_inputs))
    assert loaded.metadata == {"note": "test"}
    assert not loaded.training


def test_external_prefixes_not_stored_by_default(tmp_path, small_tiny_model):
    folder = save_pretrained(small_tiny_model, tmp_path / "model")
    stored = load_file(str(folder / WEIGHTS_FILE))
    assert stored and not any(k.startswith(EXTERNAL_PREFIX) for k in stored)
    expected = {k for k in small_tiny_model.state_dict() if not k.startswith(EXTERNAL_PREFIX)}
    assert set(stored) == expected
    assert "text_model.proj.0.weight" in stored  # our projection is stored


def test_include_frozen_stores_everything_and_round_trips(tmp_path, small_tiny_model):
    folder = save_pretrained(small_tiny_model, tmp_path / "model", include_frozen=True)
    stored = load_file(str(folder / WEIGHTS_FILE))
    assert set(stored) == set(small_tiny_model.state_dict())
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["includes_external"] is True
    # The random (non-MiniLM) text tower comes back from the file, not from the package.
    loaded_state = load_folder(folder).state_dict()
    for key, tensor in small_tiny_model.state_dict().items():
        assert torch.equal(loaded_state[key], tensor), key


def test_config_json_contents(tmp_path, small_tiny_model):
    folder = save_pretrained(small_tiny_model, tmp_path / "model")
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["format"] == "medclipseg"
    assert config["format_version"] == FORMAT_VERSION
    assert config["model"]["backbone"] == "tiny"
    assert config["model"]["vision"]["width"] == 64 and config["model"]["vision"]["patch_size"] == 32
    assert config["model"]["embed_dim"] == 32 and config["model"]["adapter_dim"] == 16
    assert config["model"]["external_prefixes"] == [EXTERNAL_PREFIX]
    assert config["includes_external"] is False
    assert not list(folder.glob("*.tmp"))
    assert read_config(folder)["model"]["backbone"] == "tiny"


def test_newer_format_version_refused(tmp_path, small_tiny_model):
    folder = save_pretrained(small_tiny_model, tmp_path / "model")
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["format_version"] = FORMAT_VERSION + 1
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="newer"):
        load_folder(folder)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        read_config(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a MedCLIPSeg config"):
        read_config(tmp_path)


def test_loading_refuses_mismatched_weights(tmp_path, small_tiny_model):
    folder = save_pretrained(small_tiny_model, tmp_path / "model")
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["model"]["adapter_dim"] = 8  # the stored adapters no longer fit
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        load_folder(folder)


# -- the authors' .pth ---------------------------------------------------------------------------

def test_authors_style_pth_loads_strictly(tmp_path, small_tiny_model, small_tiny_factory):
    state = small_tiny_model.state_dict()
    path = tmp_path / "MedCLIPSeg_latest.pth"
    first = next(p for p in small_tiny_model.parameters() if p.requires_grad)
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros_like(first)}},
                 "param_groups": [{"lr": 3e-4, "params": [0]}]}
    torch.save({"model": state, "epoch": 1, "optimizer": optimizer}, path)
    read = read_torch_checkpoint(path)
    assert set(read) == set(state)
    fresh = small_tiny_factory(pretrained_text=False, seed=123)
    load_state_dict_strict(fresh, read)
    for key, tensor in state.items():
        assert torch.equal(fresh.state_dict()[key], tensor), key


def test_plain_state_dict_with_module_prefix(tmp_path, small_tiny_model, small_tiny_factory):
    state = small_tiny_model.state_dict()
    path = tmp_path / "ddp.pth"
    torch.save({"module." + k: v for k, v in state.items()}, path)
    read = read_torch_checkpoint(path)
    assert set(read) == set(state)
    fresh = small_tiny_factory(pretrained_text=False, seed=7)
    load_state_dict_strict(fresh, read)
    assert torch.equal(fresh.state_dict()["mask_head.0.weight"], state["mask_head.0.weight"])


def test_state_dict_key_accepted():
    state = {"a": torch.zeros(1)}
    assert extract_state_dict({"state_dict": state}) == state


def test_mismatch_error_names_missing_unexpected_and_mis_shaped(small_tiny_model, small_tiny_factory):
    state = dict(small_tiny_model.state_dict())
    del state["mask_head.0.weight"]
    state["mask_head.99.weight"] = torch.zeros(2)
    state["upscale.0.conv1.weight"] = torch.zeros(1, 2, 3)
    expected_shape = tuple(small_tiny_model.state_dict()["upscale.0.conv1.weight"].shape)
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_strict(small_tiny_factory(pretrained_text=False), state)
    error = info.value
    assert error.missing == ["mask_head.0.weight"]
    assert error.unexpected == ["mask_head.99.weight"]
    assert error.mismatched == [("upscale.0.conv1.weight", (1, 2, 3), expected_shape)]
    message = str(error)
    assert "missing keys (1): mask_head.0.weight" in message
    assert "unexpected keys (1): mask_head.99.weight" in message
    assert f"upscale.0.conv1.weight checkpoint (1, 2, 3) vs model {expected_shape}" in message


def test_mismatch_error_shortens_long_lists():
    error = CheckpointMismatchError([f"k{i}" for i in range(25)], [], [])
    assert "missing keys (25)" in str(error) and "(+5 more)" in str(error)


def test_ignore_missing_only_skips_prefixed_keys(small_tiny_model, small_tiny_factory):
    state = {k: v for k, v in small_tiny_model.state_dict().items() if not k.startswith(EXTERNAL_PREFIX)}
    fresh = small_tiny_factory(pretrained_text=False, seed=5)
    load_state_dict_strict(fresh, state, ignore_missing=(EXTERNAL_PREFIX,))
    del state["logit_scale"]
    with pytest.raises(CheckpointMismatchError, match="logit_scale"):
        load_state_dict_strict(fresh, state, ignore_missing=(EXTERNAL_PREFIX,))


@pytest.mark.parametrize("payload", [[1, 2, 3], {"epoch": 1}, {"model": {"w": 1}}, "weights"])
def test_non_checkpoint_pickle_is_a_clear_value_error(tmp_path, payload):
    path = tmp_path / "not_weights.pth"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="not a MedCLIPSeg checkpoint"):
        read_torch_checkpoint(path)


def test_arbitrary_pickle_needs_trust(tmp_path):
    path = tmp_path / "custom.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Unsafe()}, path)
    with pytest.raises(ValueError, match="trust_pickle=True"):
        read_torch_checkpoint(path)
    assert set(read_torch_checkpoint(path, trust_pickle=True)) == {"w"}


def test_garbage_file_is_a_value_error(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError):
        read_torch_checkpoint(path)


class _Unsafe:
    """A class outside the weights-only allow-list."""
