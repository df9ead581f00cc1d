"""Monte-Carlo sampling of several inputs in one forward pass.

Several images (or slices), each with its own prompt and its own seed, share a pass: their pixel
values and token ids are stacked along the batch, and ``chunk`` Monte-Carlo samples of each are
folded in as ``MedCLIPSeg.iter_sample_chunks`` does (sample-major rows: row ``c * B + b`` is sample
``c`` of input ``b``). Each input draws its noise from its own generator, so an input's samples do
not depend on which others share its pass: with a seed, input ``b`` gets exactly the samples
``Predictor.predict(..., seed=seed_b)`` draws, up to the float rounding of larger matrix products.

Inputs share a pass only when their token ids have the same length (always in exact mode, where
every prompt is padded to the tower's length; in fast mode prompts of equal length): padding a
prompt further would change its result, since padding tokens take part in the adapters.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from medclipseg.inference.uncertainty import MonteCarloAccumulator
from medclipseg.modeling.prob_attention import AntitheticNoise

__all__ = ["PerInputNoise", "group_by_length", "sample_accumulators", "inputs_per_pass"]


class PerInputNoise(AntitheticNoise):
    """Noise for a pass over several inputs, each input's drawn from its own generator.

    The model's attention layers ask an AntitheticNoise object for noise when given one
    (prob_attention.standard_normal), which is why this subclasses it. With ``antithetic`` each
    input's draws come in pairs (eps, -eps) along its samples, as AntitheticNoise gives a single
    input; otherwise they are independent.
    """

    def __init__(self, generators: Sequence[Optional[torch.Generator]], antithetic: bool = False):
        super().__init__(None)
        self.generators = list(generators)
        self.antithetic = antithetic

    def draw(self, shape, device, dtype) -> torch.Tensor:
        inputs = len(self.generators)
        samples = shape[0] // inputs
        per_input = []
        for generator in self.generators:
            if self.antithetic:
                half = torch.randn((samples // 2, *shape[1:]), generator=generator, device=device, dtype=dtype)
                per_input.append(torch.cat([half, -half], dim=0))
            else:
                per_input.append(torch.randn((samples, *shape[1:]), generator=generator, device=device,
                                             dtype=dtype))
        return torch.stack(per_input, dim=1).reshape(shape)


def inputs_per_pass(rows_per_pass: int, samples_per_chunk: int) -> int:
    """How many inputs share a pass so that a pass holds about ``rows_per_pass`` rows."""
    return max(1, int(rows_per_pass) // max(1, int(samples_per_chunk)))


def group_by_length(input_ids: Sequence[torch.Tensor]) -> list:
    """Positions of the inputs grouped by token length, each group in the inputs' order."""
    groups: dict = {}
    for position, ids in enumerate(input_ids):
        groups.setdefault(int(ids.shape[-1]), []).append(position)
    return list(groups.values())


def sample_accumulators(model, pixel_values: torch.Tensor, input_ids: torch.Tensor, num_samples: int,
                        chunk: int, seeds: Sequence[Optional[int]], *, stochastic: bool = True,
                        antithetic: bool = False) -> list:
    """One MonteCarloAccumulator per input of the batch (pixel_values [B, 3, S, S], input_ids [B, L]).

    ``seeds[b]`` seeds input b's noise (None: the global generator). The caller runs this inside
    the predictor's autocast context; logits are accumulated in float32.
    """
    batch = pixel_values.shape[0]
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch} inputs")
    device = pixel_values.device
    if all(seed is None for seed in seeds):
        generators = [None] * batch
    else:
        generators = [None if seed is None else torch.Generator(device=device).manual_seed(int(seed))
                      for seed in seeds]
    if batch == 1 and not antithetic:
        noise = generators[0]  # exactly Predictor.predict's draws
    elif batch == 1:
        noise = AntitheticNoise(generators[0])
    else:
        noise = PerInputNoise(generators, antithetic=antithetic)
    accumulators = [MonteCarloAccumulator() for _ in range(batch)]
    # antithetic=False here: the pairing, if any, is done by the noise object above.
    chunks = model.iter_sample_chunks(pixel_values, input_ids, num_samples, chunk, stochastic, noise, False)
    for logits in chunks:
        for position, accumulator in enumerate(accumulators):
            accumulator.add_logits(logits[:, position].float())
    return accumulators
