"""Settings of stage 1 (`medclipseg pretrain`) and stage 2 (`medclipseg train`).

Plain dataclasses in a module without torch: the CLI reads their defaults to build its parser
and check --config files, and that should not cost a torch import. The two stages share field
names (data, out, epochs, seed, rotation_*...) but not their defaults, so each keeps its own list.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class PretrainConfig:
    """Stage 1: the tiny image tower aligned with the frozen MiniLM text tower."""

    data: str
    out: str
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    dense_weight: float = 1.0
    pct: int = 100
    seed: int = 0
    rotation_degrees: float = 15.0
    rotation_probability: float = 0.5
    max_steps: Optional[int] = None
    model: dict = field(default_factory=dict)  # overrides of medclipseg.registry.tiny_config
    device: Optional[str] = None
    progress: bool = True


@dataclass
class TrainConfig:
    """Stage 2: adapters, upscaler and mask head with both towers frozen."""

    data: str
    out: str
    backbone: str = "tiny"
    init: Optional[str] = None  # start from weights: "demo", our model folder, an authors' .pth, hf://
    epochs: int = 100
    batch_size: int = 24
    lr: float = 3e-4
    min_lr: float = 1e-4
    seed: int = 666
    pct: int = 100
    design: str = "original"
    tokenizer_mode: str = "exact"
    dice_weight: float = 0.5
    bce_weight: float = 0.5
    contrastive_weight: float = 0.1
    temperature: float = 0.2
    rotation_probability: float = 0.5
    rotation_degrees: float = 20.0
    max_steps_per_epoch: Optional[int] = None
    validate: bool = True
    device: Optional[str] = None
    resume: bool = True
    progress: bool = True
    # Ablations: stochastic=False trains with the value means only (no probabilistic attention);
    # fusion_layers=[] drops the adapters (head and upscaler only); None keeps the model's own.
    stochastic: bool = True
    fusion_layers: Optional[list] = None
