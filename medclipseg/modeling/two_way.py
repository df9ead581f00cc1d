"""Two-way layer: image attends to text, then text attends to the updated image."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from medclipseg.modeling.prob_attention import ProbabilisticCrossAttention


class TwoWayLayer(nn.Module):
    def __init__(self, dim: int = 256, beta: float = 2.35):
        super().__init__()
        self.cross_attn_img_to_txt = ProbabilisticCrossAttention(dim, beta)
        self.cross_attn_txt_to_img = ProbabilisticCrossAttention(dim, beta)

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        stochastic: bool = True,
        generator: Optional[torch.Generator] = None,
    ):
        image = self.cross_attn_img_to_txt(image, text, stochastic, generator)
        # Order matters: text reads the image tokens that already saw the text.
        text = self.cross_attn_txt_to_img(text, image, stochastic, generator)
        return image, text
