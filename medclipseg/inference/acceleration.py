"""How the model's arithmetic runs: precision per device.

``check_precision`` refuses, in words, a precision the device cannot run; ``prepare_model``
readies the model once for it (called by ``Predictor.__init__``); ``autocast`` is the context the
predictor's sampling loop runs in.

=========  ======  ===========================================================================
precision  device  what runs
=========  ======  ===========================================================================
fp32       any     the model as it is (bit-identical to a predictor without a precision)
bf16       CPU     a copy of the model whose tower matrix products (attention and MLP of every
                   image and text layer) hold bfloat16 weights and run in bfloat16; the residual
                   streams, layer norms, adapters, upscaler and mask head stay in float32.
                   No autocast: the weights are cast once, not on every pass.
bf16       CUDA    the model as it is, under ``torch.autocast(dtype=bfloat16)``
fp16       CUDA    the model as it is, under ``torch.autocast(dtype=float16)``
=========  ======  ===========================================================================

Why bf16 on CPU is built this way (2-core Intel Xeon with AMX-BF16, torch 2.14.1, the authors'-size
model, 8 antithetic samples; benchmarks/mc_inference.py, docs/benchmarks.md):

- CPU autocast re-casts every weight on every pass and was slower than fp32 (5.99 s against 3.71 s).
- Weights cast once run the tower GEMMs on AMX tiles (830 against 186 GFLOP/s for a 768x3072
  layer): 1.48 s against 3.73 s in fp32 per image, 11.7x the authors' fp32 loop (13.3x on a quieter
  machine, 6.6x to 8.7x while other work loaded both cores).
- Casting the whole model (residual streams included) cost accuracy: mask Dice against the fp32
  K=30 reference fell from 0.9935 to 0.9894. With the streams, norms and probabilistic adapters
  in float32 it stays at the fp32 agreement within the Monte-Carlo noise: mask Dice 0.9935 and
  entropy Pearson 0.9995 (fp32 with the same seeds: 0.9938, 0.9995).
- A CPU without AVX512-BF16/AMX runs bf16 matrix products in emulation, several times slower
  than fp32 (16 against 98 GFLOP/s on a 2-core AVX2 EPYC): use fp32 there
  (``cpu_has_fast_bf16`` tells which).
"""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # private helpers; absent means unknown, so say no
        return False


def check_precision(precision: str, device) -> str:
    """The precision to run (``auto`` resolved for the device), or a ValueError in words."""
    precision = str(precision or "fp32").lower()
    if precision == "auto":
        # bf16 only where it was measured to agree and to be faster: a CPU with bfloat16 hardware.
        # A GPU stays fp32 until its agreement is measured there (benchmarks/device_latency.py).
        return "bf16" if torch.device(device).type == "cpu" and cpu_has_fast_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    device = torch.device(device)
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 runs on a GPU only; on a CPU use fp32 or bf16.")
    return precision


def prepare_model(model, precision: str, device):
    """The model ready for `precision` on `device`.

    fp32 and every GPU precision: the same module (autocast does any casting). bf16 on a CPU: a
    converted copy, so a caller who keeps using `model` still has the float32 model untouched.
    """
    if precision == "bf16" and torch.device(device).type == "cpu":
        return cpu_bf16_model(model)
    return model


def autocast(device, precision: str):
    """The context every sampling pass runs in: autocast on a GPU for bf16/fp16, else nothing
    (fp32, and bf16 on a CPU, whose model carries its own bfloat16 weights)."""
    if precision == "fp32" or torch.device(device).type == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])


# -- bf16 on CPU -------------------------------------------------------------------------------
def _cast(value, dtype, memo: dict):
    """Floating tensors (also inside tuples/lists) to dtype; a tensor passed twice stays one
    tensor, so nn.MultiheadAttention still sees query is key is value (its packed projection)."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or value.dtype == dtype:
            return value
        if id(value) not in memo:
            memo[id(value)] = value.to(dtype)
        return memo[id(value)]
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype, memo) for v in value)
    return value


class BFloat16Island(nn.Module):
    """Runs `module` (bfloat16 weights) on bfloat16 inputs. float_output=True hands float32 back
    to the float32 stream; False hands bfloat16 to the next island without a round trip."""

    def __init__(self, module: nn.Module, float_output: bool = True):
        super().__init__()
        self.module = module.to(torch.bfloat16)
        self.float_output = float_output

    def forward(self, *args, **kwargs):
        memo: dict = {}
        args = _cast(args, torch.bfloat16, memo)
        kwargs = {key: _cast(value, torch.bfloat16, memo) for key, value in kwargs.items()}
        out = self.module(*args, **kwargs)
        return _cast(out, torch.float32, {}) if self.float_output else out


def _island_plan(model) -> list:
    """(parent, attribute, float_output) for every tower sub-module that becomes an island."""
    from open_clip.transformer import ResidualAttentionBlock

    from medclipseg.modeling.text_towers import BertLayer

    plan = []
    for tower in (model.vision_model, model.text_model):
        for module in tower.modules():
            if isinstance(module, ResidualAttentionBlock):  # ViT and CLIP text layers
                plan += [(module, "attn", True), (module, "mlp", True)]
            elif isinstance(module, BertLayer):
                # self-attention -> output.dense and intermediate -> output.dense stay bfloat16 in
                # between; each dense hands float32 to the residual add and LayerNorm.
                plan += [(module.attention, "self", False), (module.attention.output, "dense", True),
                         (module, "intermediate", False), (module.output, "dense", True)]
    return plan


def cpu_bf16_model(model):
    """A copy of `model` with the tower layers' matrix products in bfloat16 (module docstring)."""
    plan = _island_plan(model)
    # Pre-seed deepcopy with bfloat16 copies of the island parameters, so the copy never holds a
    # second float32 set of the towers' weights.
    memo = {}
    for parent, name, _ in plan:
        for tensor in list(getattr(parent, name).parameters()) + list(getattr(parent, name).buffers()):
            if tensor.is_floating_point():
                converted = tensor.detach().to(torch.bfloat16)
                memo[id(tensor)] = nn.Parameter(converted, requires_grad=False) if isinstance(
                    tensor, nn.Parameter) else converted
    converted = copy.deepcopy(model, memo)
    converted.eval().requires_grad_(False)
    copies = dict(zip((id(m) for m in model.modules()), converted.modules()))
    for parent, name, float_output in plan:
        target = copies[id(parent)]
        setattr(target, name, BFloat16Island(getattr(target, name), float_output))
    return converted
