"""Checkpoints: the authors' `.pth` files and our own safetensors + JSON format.

Our format is a folder:
    config.json        {"format": "medclipseg", "format_version": 1, "model": ModelConfig, ...}
    model.safetensors  the weights; by default all but the config's `external_prefixes`
                       (towers that come from a package or the hub), i.e. what was trained
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional

from medclipseg.modeling.config import ModelConfig

# torch is imported inside the functions that read tensors: the CLI imports this module for
# CheckpointMismatchError on every command, and most commands need no torch.
if TYPE_CHECKING:
    import torch

FORMAT_NAME = "medclipseg"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LIST_LIMIT = 20


class CheckpointMismatchError(RuntimeError):
    """A state dict does not fit the model: names the missing, unexpected and mis-shaped keys."""

    def __init__(self, missing, unexpected, mismatched):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)  # (key, checkpoint shape, model shape)
        lines = ["checkpoint does not match the model"]
        if self.missing:
            lines.append(f"missing keys ({len(self.missing)}): " + _short(self.missing))
        if self.unexpected:
            lines.append(f"unexpected keys ({len(self.unexpected)}): " + _short(self.unexpected))
        if self.mismatched:
            lines.append(
                f"shape mismatches ({len(self.mismatched)}): "
                + _short([f"{k} checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched])
            )
        super().__init__("\n".join(lines))


def _short(items) -> str:
    items = list(items)
    text = ", ".join(items[:LIST_LIMIT])
    return text + (f", ... (+{len(items) - LIST_LIMIT} more)" if len(items) > LIST_LIMIT else "")


def extract_state_dict(obj) -> dict:
    """A state dict from a checkpoint object: {'model': sd, ...} or a plain state dict."""
    import torch

    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            "not a MedCLIPSeg checkpoint: expected a dict with a 'model' state dict or a plain state dict of tensors"
        )
    state = dict(obj)
    # Checkpoints saved from DataParallel / DDP prefix every key with "module.".
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_torch_checkpoint(path, trust_pickle: bool = False) -> dict:
    """Load a `.pth`. weights_only loading first; arbitrary pickles only when trusted."""
    import torch

    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not trust_pickle:
            raise ValueError(
                f"{path} could not be read as a weights-only checkpoint ({type(exc).__name__}: {exc}). "
                "If you trust its origin, load it with trust_pickle=True."
            ) from exc
        obj = torch.load(path, map_location="cpu", weights_only=False)
    return extract_state_dict(obj)


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], ignore_missing=()) -> None:
    """Raise CheckpointMismatchError unless keys and shapes match the model exactly."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith(tuple(ignore_missing))]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched)


def load_state_dict_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], ignore_missing=()) -> None:
    check_state_dict(model, state, ignore_missing)
    model.load_state_dict(state, strict=not ignore_missing)


# -- our format -------------------------------------------------------------------------------

def stored_state_dict(model, include_frozen: bool = False) -> dict:
    external = tuple(model.config.external_prefixes)
    return {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if include_frozen or not k.startswith(external)
    }


def save_pretrained(model, directory, include_frozen: bool = False, metadata: Optional[dict] = None) -> Path:
    """Write config.json and model.safetensors to `directory` (created)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = stored_state_dict(model, include_frozen)
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "includes_external": bool(include_frozen),
        "metadata": metadata or {},
    }
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT_NAME})
    tmp.replace(directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def read_config(directory) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise ValueError(f"{directory} is not a MedCLIPSeg model folder: no {CONFIG_FILE}")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not a MedCLIPSeg config (format={config.get('format')!r})")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: format version {config['format_version']} is newer than this library supports")
    return config


def read_model_folder(directory):
    """Build the model named by config.json, fill external towers, load the stored weights strictly.

    The format reader behind ``medclipseg.registry.load_model``, which callers use: it also
    names the model by its content and builds its tokenizer. Returns the model on the CPU."""
    from safetensors.torch import load_file

    from medclipseg.registry import build_model
    from medclipseg.weights.external import fill_external_towers

    directory = Path(directory)
    config = read_config(directory)
    model_config = ModelConfig.from_dict(config["model"])
    model = build_model(model_config)
    state = load_file(str(directory / WEIGHTS_FILE))
    external = tuple(model_config.external_prefixes)
    if config.get("includes_external"):
        load_state_dict_strict(model, state)
    else:
        fill_external_towers(model)
        load_state_dict_strict(model, state, ignore_missing=external)
    model.metadata = config.get("metadata", {})
    return model.eval()
