"""Probabilistic vision-language (PVL) adapter between two tower layers."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from medclipseg.modeling.two_way import TwoWayLayer


class PVLAdapter(nn.Module):
    """Project both streams down, fuse them with a two-way layer, project back up.

    Returns residual updates for the image and the text stream; the caller adds them.
    """

    def __init__(self, vision_width: int, text_width: int, dim: int = 256, beta: float = 2.35):
        super().__init__()
        # A Sequential so that parameter names match the authors' checkpoints.
        self.proj_vis_down = nn.Sequential(nn.Linear(vision_width, dim, bias=False))
        self.proj_txt_down = nn.Linear(text_width, dim, bias=False)
        self.proj_vis_up = nn.Linear(dim, vision_width, bias=False)
        self.proj_txt_up = nn.Linear(dim, text_width, bias=False)
        self.two_way = TwoWayLayer(dim, beta)

    def forward(
        self,
        image_tokens: torch.Tensor,
        text_tokens: torch.Tensor,
        stochastic: bool = True,
        generator: Optional[torch.Generator] = None,
    ):
        image = self.proj_vis_down(image_tokens)
        text = self.proj_txt_down(text_tokens)
        image, text = self.two_way(image, text, stochastic, generator)
        return self.proj_vis_up(image), self.proj_txt_up(text)
