"""Probabilistic cross-attention: keys and values are Gaussians, not points.

Each context token yields a mean and a variance for its key and its value. Attention scores
are penalised by the spread of the key under the query; values are sampled, so repeated
forward passes differ and their spread is the model's uncertainty.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

VARIANCE_FLOOR = 1e-6


class AntitheticNoise:
    """Standard normal noise in antithetic pairs along the (sample-folded) batch dimension.

    The first half of the batch gets eps, the second half -eps: every draw is still N(0, 1),
    but the first-order effect of the noise cancels in the sample mean, so a mean over K
    antithetic samples is far closer to the true mean than one over K independent samples.
    """

    def __init__(self, generator: Optional[torch.Generator] = None):
        self.generator = generator

    def draw(self, shape, device, dtype) -> torch.Tensor:
        if shape[0] % 2:
            raise ValueError("antithetic noise needs an even (sample-folded) batch")
        half = torch.randn((shape[0] // 2, *shape[1:]), generator=self.generator, device=device, dtype=dtype)
        return torch.cat([half, -half], dim=0)


def standard_normal(shape, like: torch.Tensor, generator) -> torch.Tensor:
    """N(0, 1) noise shaped `shape`; `generator` is a torch.Generator, None or an AntitheticNoise."""
    if isinstance(generator, AntitheticNoise):
        return generator.draw(shape, like.device, like.dtype)
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


class ProbabilisticCrossAttention(nn.Module):
    """Single-head cross-attention with Gaussian keys and values and a gated residual.

    score = Q K_mu^T / sqrt(d) - beta * sqrt((Q*Q) K_var^T / d)
    V     = V_mu + sqrt(V_var) * eps,  eps ~ N(0, 1)   (eps = 0 when not stochastic)
    out   = out_proj(softmax(score) V)
    y     = sigmoid(gate) * out + (1 - sigmoid(gate)) * query
    """

    def __init__(self, dim: int = 256, beta: float = 2.35, layer_norm_eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.beta = beta
        self.gate = nn.Parameter(torch.zeros(()))
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, 2 * dim)
        self.v_proj = nn.Linear(dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm_k = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.norm_v = nn.LayerNorm(dim, eps=layer_norm_eps)

    def gaussian_keys_values(self, context: torch.Tensor):
        """Return (key_mean, key_var, value_mean, value_var), each [B, L, d]."""
        key_mean, key_raw_var = self.k_proj(context).chunk(2, dim=-1)
        value_mean, value_raw_var = self.v_proj(context).chunk(2, dim=-1)
        key_mean = self.norm_k(key_mean)
        value_mean = self.norm_v(value_mean)
        key_var = F.softplus(key_raw_var) + VARIANCE_FLOOR
        value_var = F.softplus(value_raw_var) + VARIANCE_FLOOR
        return key_mean, key_var, value_mean, value_var

    def forward(
        self,
        query: torch.Tensor,
        context: torch.Tensor,
        stochastic: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        q = self.q_proj(query)
        key_mean, key_var, value_mean, value_var = self.gaussian_keys_values(context)
        scale = 1.0 / math.sqrt(self.dim)
        mean_score = torch.matmul(q, key_mean.transpose(-1, -2)) * scale
        # Variance of q.k under the key Gaussian, per query/context pair.
        spread = torch.matmul(q * q, key_var.transpose(-1, -2)) * (1.0 / self.dim)
        scores = mean_score - self.beta * torch.sqrt(spread)
        weights = torch.softmax(scores, dim=-1)
        if stochastic:
            noise = standard_normal(value_mean.shape, value_mean, generator)
            values = value_mean + torch.sqrt(value_var) * noise
        else:
            values = value_mean
        out = self.out_proj(torch.matmul(weights, values))
        gate = torch.sigmoid(self.gate)
        return gate * out + (1.0 - gate) * query
