"""Model parts of MedCLIPSeg, one concept per module."""
from .prob_attention import ProbabilisticCrossAttention
from .two_way import TwoWayLayer
from .pvl_adapter import PVLAdapter
from .upscale import ChannelLayerNorm, UpscaleBlock
from .mask_head import MaskHead
from .medclipseg import MedCLIPSeg

__all__ = [
    "ProbabilisticCrossAttention",
    "TwoWayLayer",
    "PVLAdapter",
    "ChannelLayerNorm",
    "UpscaleBlock",
    "MaskHead",
    "MedCLIPSeg",
]
