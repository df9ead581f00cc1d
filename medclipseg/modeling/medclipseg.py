"""MedCLIPSeg: fused CLIP towers, an upscaler and a text-conditioned mask head."""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from medclipseg.modeling.fused_encoder import FusedEncoder, FusionState, check_fusion_layers
from medclipseg.modeling.mask_head import MaskHead, patch_map
from medclipseg.modeling.prob_attention import AntitheticNoise
from medclipseg.modeling.pvl_adapter import PVLAdapter
from medclipseg.modeling.upscale import UpscaleBlock

TRAINABLE_PREFIXES = ("pvl_adapters", "mask_head", "upscale")


class MedCLIPSeg(nn.Module):
    """Parameter names follow the authors' checkpoints: `logit_scale`, `vision_model.*`,
    `text_model.*`, `mask_head.*`, `upscale.*`, `pvl_adapters.*`."""

    def __init__(
        self,
        vision_model: nn.Module,
        text_model: nn.Module,
        embed_dim: int = 512,
        adapter_dim: int = 256,
        beta: float = 2.35,
        fusion_layers: Sequence[int] = tuple(range(1, 11)),
        image_size: int = 224,
        num_upscale_blocks: int = 2,
    ):
        super().__init__()
        if vision_model.depth != text_model.depth:
            raise ValueError(
                f"towers must have equal depth to run in lockstep: image {vision_model.depth}, text {text_model.depth}"
            )
        self.fusion_layers = check_fusion_layers(fusion_layers, vision_model.depth)
        # Unused by the segmentation path; kept so that the authors' checkpoints load strictly.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.vision_model = vision_model
        self.text_model = text_model
        self.mask_head = MaskHead(embed_dim, image_size)
        self.upscale = nn.ModuleList([UpscaleBlock(embed_dim) for _ in range(num_upscale_blocks)])
        self.pvl_adapters = nn.ModuleList(
            [PVLAdapter(vision_model.width, text_model.width, adapter_dim, beta) for _ in self.fusion_layers]
        )
        self.image_size = image_size
        self.encoder = FusedEncoder(self.vision_model, self.text_model, self.pvl_adapters, self.fusion_layers)

    # -- pieces -------------------------------------------------------------------------------
    def freeze_backbone(self) -> None:
        """Frozen towers, trainable adapters, upscaler and head (the authors' split)."""
        for name, param in self.named_parameters():
            param.requires_grad_(name.startswith(TRAINABLE_PREFIXES))

    def decode(self, image_tokens: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        feature_map = patch_map(image_tokens)
        for block in self.upscale:
            feature_map = block(feature_map)
        return self.mask_head(text_embeds, feature_map)

    def shared_prefix(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> FusionState:
        """Everything before the first fusion layer: deterministic, so Monte-Carlo samples share it."""
        state = self.encoder.start(pixel_values, input_ids)
        first = self.fusion_layers[0] if self.fusion_layers else self.encoder.depth
        return self.encoder.run(state, stop=first, stochastic=False)

    def finish(self, state: FusionState, stochastic: bool, generator: Optional[torch.Generator]):
        state = self.encoder.run(state, stochastic=stochastic, generator=generator)
        image_tokens, text_embeds = self.encoder.finish(state)
        return self.decode(image_tokens, text_embeds), image_tokens, text_embeds

    # -- public API -----------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        stochastic: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> dict:
        """One pass (values sampled, as in training). Returns logits [B, S, S], image_tokens
        [B, 1+P, D] and text_embeds [B, D]."""
        state = self.encoder.start(pixel_values, input_ids)
        logits, image_tokens, text_embeds = self.finish(state, stochastic, generator)
        return {"logits": logits, "image_tokens": image_tokens, "text_embeds": text_embeds}

    def iter_sample_chunks(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        num_samples: int,
        chunk_size: int = 8,
        stochastic: bool = True,
        generator: Optional[torch.Generator] = None,
        antithetic: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Yield logits chunks [c, B, S, S] until num_samples samples were produced.

        The prefix before the first fusion layer runs once; each chunk folds c samples into
        the batch, so memory is bounded by chunk_size, not by num_samples. With antithetic=True
        samples come in pairs (eps, -eps) within each chunk (num_samples and chunk_size even).
        """
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if antithetic and (num_samples % 2 or chunk_size % 2):
            raise ValueError("antithetic sampling needs an even num_samples and chunk_size")
        noise = AntitheticNoise(generator) if antithetic else generator
        batch = pixel_values.shape[0]
        prefix = self.shared_prefix(pixel_values, input_ids)
        if not stochastic:
            # Without noise every sample is the same: compute one and repeat it.
            logits, _, _ = self.finish(prefix, False, None)
            yield logits.unsqueeze(0).expand(num_samples, *logits.shape)
            return
        produced = 0
        while produced < num_samples:
            count = min(chunk_size, num_samples - produced)
            logits, _, _ = self.finish(prefix.repeat(count), True, noise)
            produced += count
            yield logits.view(count, batch, *logits.shape[1:])

    def forward_samples(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        num_samples: int,
        stochastic: bool = True,
        generator: Optional[torch.Generator] = None,
        chunk_size: int = 8,
        antithetic: bool = False,
    ) -> torch.Tensor:
        """Monte-Carlo logits [num_samples, B, S, S]; stochastic=False uses the value means."""
        chunks = self.iter_sample_chunks(pixel_values, input_ids, num_samples, chunk_size, stochastic, generator,
                                         antithetic)
        return torch.cat(list(chunks), dim=0)
