"""Model parts of MedCLIPSeg, one concept per module.

The parts resolve on first use, so that ``medclipseg.modeling.config`` (plain dataclasses) is
importable without torch.
"""
from __future__ import annotations

_PARTS = {
    "ProbabilisticCrossAttention": "medclipseg.modeling.prob_attention",
    "TwoWayLayer": "medclipseg.modeling.two_way",
    "PVLAdapter": "medclipseg.modeling.pvl_adapter",
    "ChannelLayerNorm": "medclipseg.modeling.upscale",
    "UpscaleBlock": "medclipseg.modeling.upscale",
    "MaskHead": "medclipseg.modeling.mask_head",
    "MedCLIPSeg": "medclipseg.modeling.medclipseg",
}

__all__ = list(_PARTS)


def __getattr__(name: str):
    if name in _PARTS:
        import importlib

        value = getattr(importlib.import_module(_PARTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medclipseg.modeling' has no attribute {name!r}")
