"""The authors' published checkpoints (UniMed-CLIP ViT-B/16 layout, 668 keys)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

from medclipseg.registry import build_unimedclip_vit_b16
from medclipseg.weights.checkpoint import load_state_dict_strict, read_torch_checkpoint

HUB_REPO = "TahaKoleilat/MedCLIPSeg"
KEYS_FILE = Path(__file__).resolve().parents[1] / "resources" / "official_checkpoint_keys.json"


def official_checkpoint_uri(dataset: str, pct: Optional[int] = None, seed: int = 666) -> str:
    """hf:// address of an authors' checkpoint, e.g. official_checkpoint_uri("BUSI")."""
    folder = dataset if pct in (None, 100) else f"{dataset}_{pct}"
    return f"hf://{HUB_REPO}/{folder}/trained_models/seed{seed}/MedCLIPSeg_unimedclip_ViT-B-16_latest.pth"


@lru_cache(maxsize=1)
def official_key_table() -> dict:
    """The authors' key list: {key: (shape, trainable)}."""
    data = json.loads(KEYS_FILE.read_text())
    return {e["key"]: (tuple(e["shape"]), bool(e["trainable"])) for e in data["keys"]}


def read_official_checkpoint(path, text_config: Optional[dict] = None, trust_pickle: bool = False):
    """Build the authors' layout and load their weights strictly (a local file; on the CPU).

    The format reader behind ``medclipseg.registry.load_model``."""
    state = read_torch_checkpoint(path, trust_pickle=trust_pickle)
    model = build_unimedclip_vit_b16(text_config)
    load_state_dict_strict(model, state)
    return model.eval()


def load_official_model(source, text_config: Optional[dict] = None, device="cpu", trust_pickle: bool = False):
    """An authors' checkpoint as a model in eval mode, through ``medclipseg.registry.load_model``.

    source: a local `.pth` or `hf://owner/repo/path`. text_config: BERT config fields overriding
    the built-in BiomedBERT-base configuration (no hub access is needed either way).
    """
    from medclipseg.registry import load_model

    return load_model(source, device=device, text_config=text_config, trust_pickle=trust_pickle).model


def random_official_state_dict(seed: int = 0) -> dict:
    """Random weights in the authors' exact layout (for benchmarks and conformance checks).

    LayerNorm scales near 1, small biases and embeddings, fan-in scaled matrices, gates ~ N(0,1):
    a model whose activations and Monte-Carlo spread look like a trained one's in scale.
    """
    import math

    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, (shape, _) in official_key_table().items():
        leaf = key.rsplit(".", 1)[-1]
        if key == "logit_scale":
            value = torch.tensor(math.log(1 / 0.07))
        elif leaf == "gate":
            value = torch.randn((), generator=generator)
        elif len(shape) == 1 and leaf == "weight":  # LayerNorm scales
            value = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:
            value = 0.02 * torch.randn(shape, generator=generator)
        elif "embedding" in key or key.endswith("class_embedding"):
            value = 0.02 * torch.randn(shape, generator=generator)
        else:
            fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1)
            if key.endswith("vision_model.proj"):
                fan_in = shape[0]
            if "conv1" in key and "upscale" in key:  # ConvTranspose2d weight: [in, out, k, k]
                fan_in = shape[0]
            value = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        state[key] = value.float()
    return state
