"""Model parts of MedCLIPSeg, one concept per module.

The parts resolve on first use, so that ``medclipseg.modeling.config`` (plain dataclasses) is
importable without torch.
"""
from __future__ import annotations

from medclipseg.lazy import lazy_getattr

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

__getattr__ = lazy_getattr(globals(), _PARTS)
