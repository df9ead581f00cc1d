"""Model parts of MedCLIPSeg, one concept per module."""
from medclipseg.modeling.prob_attention import ProbabilisticCrossAttention
from medclipseg.modeling.two_way import TwoWayLayer
from medclipseg.modeling.pvl_adapter import PVLAdapter
from medclipseg.modeling.upscale import ChannelLayerNorm, UpscaleBlock
from medclipseg.modeling.mask_head import MaskHead
from medclipseg.modeling.medclipseg import MedCLIPSeg

__all__ = [
    "ProbabilisticCrossAttention",
    "TwoWayLayer",
    "PVLAdapter",
    "ChannelLayerNorm",
    "UpscaleBlock",
    "MaskHead",
    "MedCLIPSeg",
]
