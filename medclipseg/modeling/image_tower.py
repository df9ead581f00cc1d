"""Image tower: open_clip's VisionTransformer, driven one block at a time."""
from __future__ import annotations

import torch
from open_clip.model import QuickGELU
from open_clip.transformer import VisionTransformer
from torch import nn


class ImageTower(VisionTransformer):
    """open_clip's ViT (so parameter names match the authors' `vision_model.*`) with a
    layer-by-layer interface for the lockstep fused encoder."""

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        output_dim: int = 512,
        quick_gelu: bool = True,
    ):
        super().__init__(
            image_size=image_size,
            patch_size=patch_size,
            width=width,
            layers=layers,
            heads=heads,
            mlp_ratio=mlp_ratio,
            output_dim=output_dim,
            act_layer=QuickGELU if quick_gelu else nn.GELU,
        )
        self.width = width
        self.depth = layers

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch embedding, class token, positions and ln_pre -> [B, 1+P, width]."""
        x = self.conv1(pixel_values)
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def run_layer(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.transformer.resblocks[index](x)

    def project_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """ln_post and proj on every token (class token included) -> [B, 1+P, output_dim]."""
        return self.ln_post(x) @ self.proj
