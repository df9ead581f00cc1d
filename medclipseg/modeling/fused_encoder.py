"""Lockstep fusion of an image tower and a text tower through PVL adapters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from medclipseg.modeling.text_towers import TextState


@dataclass
class FusionState:
    """Both streams between two layers; `next_layer` is the index of the layer still to run."""

    image: torch.Tensor
    text: torch.Tensor
    text_state: TextState
    next_layer: int

    def repeat(self, times: int) -> "FusionState":
        if times == 1:
            return self
        return FusionState(
            image=self.image.repeat(times, 1, 1),
            text=self.text.repeat(times, 1, 1),
            text_state=self.text_state.repeat(times),
            next_layer=self.next_layer,
        )


def check_fusion_layers(fusion_layers: Sequence[int], depth: int) -> tuple:
    layers = tuple(sorted(int(i) for i in fusion_layers))
    if len(set(layers)) != len(layers) or any(i < 0 or i >= depth for i in layers):
        raise ValueError(f"fusion layers {layers} must be distinct indices in [0, {depth})")
    return layers


class FusedEncoder:
    """Runs the towers of a MedCLIPSeg model layer by layer (not a Module: it owns no weights).

    Before layer i of both towers, for every fusion layer i, adapter number k (the position of i
    in `fusion_layers`) reads both streams and its updates are added to both.
    """

    def __init__(self, vision_model, text_model, adapters: nn.ModuleList, fusion_layers: Sequence[int]):
        self.vision_model = vision_model
        self.text_model = text_model
        self.adapters = adapters
        self.fusion_layers = tuple(fusion_layers)
        self.adapter_index = {layer: k for k, layer in enumerate(self.fusion_layers)}
        self.depth = vision_model.depth

    def start(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> FusionState:
        image = self.vision_model.embed(pixel_values)
        text, text_state = self.text_model.embed(input_ids)
        return FusionState(image, text, text_state, next_layer=0)

    def run(
        self,
        state: FusionState,
        stop: Optional[int] = None,
        stochastic: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> FusionState:
        """Run layers state.next_layer .. stop-1 (all remaining when stop is None)."""
        stop = self.depth if stop is None else stop
        image, text = state.image, state.text
        for i in range(state.next_layer, stop):
            adapter = self.adapter_index.get(i)
            if adapter is not None:
                image_update, text_update = self.adapters[adapter](image, text, stochastic, generator)
                image = image + image_update
                text = text + text_update
            image = self.vision_model.run_layer(i, image)
            text = self.text_model.run_layer(i, text, state.text_state)
        return FusionState(image, text, state.text_state, next_layer=stop)

    def finish(self, state: FusionState):
        """-> (image_tokens [B, 1+P, D], text_embeds [B, D])"""
        return (
            self.vision_model.project_tokens(state.image),
            self.text_model.pool_and_project(state.text, state.text_state),
        )
