"""Mask head: a text MLP whose output is dotted with every pixel of the upscaled patch map."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def text_mlp(dim: int) -> nn.Sequential:
    # Indices 0, 2, 4 carry weights, as in the authors' checkpoints.
    return nn.Sequential(
        nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim)
    )


def patch_map(image_tokens: torch.Tensor) -> torch.Tensor:
    """[B, 1+P, D] projected tokens -> L2-normalised patch map [B, D, g, g] (class token dropped)."""
    patches = F.normalize(image_tokens[:, 1:], dim=-1)
    batch, count, dim = patches.shape
    grid = int(round(count ** 0.5))
    if grid * grid != count:
        raise ValueError(f"{count} patch tokens do not form a square grid")
    return patches.transpose(1, 2).reshape(batch, dim, grid, grid)


def mask_logits(
    text_features: torch.Tensor, feature_map: torch.Tensor, output_size: int
) -> torch.Tensor:
    """<text[b], map[b, :, h, w]> resized bilinearly to output_size -> [B, S, S]."""
    logits = torch.einsum("bc,bchw->bhw", text_features, feature_map)
    logits = F.interpolate(
        logits.unsqueeze(1), size=(output_size, output_size), mode="bilinear", align_corners=False
    )
    return logits.squeeze(1)


class MaskHead(nn.Sequential):
    """The text MLP (512->512->512->512, GELU between); `forward` returns mask logits.

    A Sequential so that its parameters are named `mask_head.0/2/4` as in the authors' checkpoints.
    """

    def __init__(self, dim: int = 512, output_size: int = 224):
        super().__init__(*text_mlp(dim))
        self.output_size = output_size

    def text_features(self, text_embeds: torch.Tensor) -> torch.Tensor:
        return super().forward(F.normalize(text_embeds, dim=-1))

    def forward(self, text_embeds: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        return mask_logits(self.text_features(text_embeds), feature_map, self.output_size)
