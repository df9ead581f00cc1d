"""Settings of stage 1 (`medclipseg pretrain`) and stage 2 (`medclipseg train`).

Plain dataclasses in a module without torch: the CLI reads their defaults to build its parser
and check --config files, and that should not cost a torch import. The two stages share field
names (data, out, epochs, seed, rotation_*...) but not their defaults, so each keeps its own list.
"""
from __future__ import annotations

import math
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


@dataclass
class RetrainRecipe:
    """One fine-tuning round on annotators' corrections (`medclipseg retrain`, the app's Model tab).

    Sized for a coffee break on a laptop CPU: a round of 50-150 slices of the demo model trains
    in about a minute or two (docs/training.md#retraining-on-corrections has the measurements). The
    training fields mean what they mean in TrainConfig; the last three set how a version is scored
    on the gold split (Monte-Carlo samples, mask threshold, NSD tolerance in pixels).
    """

    epochs: int = 12
    batch_size: int = 8
    lr: float = 1e-3
    min_lr: float = 1e-4
    seed: int = 666
    rotation_degrees: float = 20.0
    rotation_probability: float = 0.5
    stochastic: bool = True
    max_steps_per_epoch: Optional[int] = None
    eval_samples: int = 8
    threshold: float = 0.5
    nsd_tolerance: float = 2.0

    def __post_init__(self):
        problems = []
        for name in ("epochs", "batch_size", "eval_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a whole number of at least 1, got {value!r}")
        steps = self.max_steps_per_epoch
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            problems.append(f"max_steps_per_epoch must be a whole number of at least 1 or left out, got {steps!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            problems.append(f"seed must be a whole number, got {self.seed!r}")
        for name in ("lr", "min_lr", "rotation_degrees", "rotation_probability", "threshold", "nsd_tolerance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{name} must be a finite number, got {value!r}")
        if not problems:
            if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
                problems.append(f"lr must be above 0 and min_lr between 0 and lr, got lr={self.lr!r}, "
                                f"min_lr={self.min_lr!r}")
            if not 0 <= self.rotation_probability <= 1:
                problems.append(f"rotation_probability must lie in [0, 1], got {self.rotation_probability!r}")
            if self.rotation_degrees < 0:
                problems.append(f"rotation_degrees must not be negative, got {self.rotation_degrees!r}")
            if not 0 < self.threshold < 1:
                problems.append(f"threshold must lie strictly between 0 and 1, got {self.threshold!r}")
            if self.nsd_tolerance < 0:
                problems.append(f"nsd_tolerance must not be negative, got {self.nsd_tolerance!r}")
        if not isinstance(self.stochastic, bool):
            problems.append(f"stochastic must be true or false, got {self.stochastic!r}")
        if problems:
            raise ValueError("Invalid retrain recipe: " + "; ".join(problems) + ".")

    def train_config(self, *, data: str, out: str, init: str, device: Optional[str] = None) -> TrainConfig:
        """The stage-2 settings of this round: no validation split, no resume, no console output."""
        return TrainConfig(
            data=str(data), out=str(out), init=str(init), epochs=self.epochs, batch_size=self.batch_size,
            lr=float(self.lr), min_lr=float(self.min_lr), seed=self.seed,
            rotation_degrees=float(self.rotation_degrees), rotation_probability=float(self.rotation_probability),
            stochastic=self.stochastic, max_steps_per_epoch=self.max_steps_per_epoch,
            validate=False, resume=False, progress=False, device=device,
        )


def load_recipe(path) -> RetrainRecipe:
    """A RetrainRecipe from a TOML file whose keys are its fields; missing keys keep the defaults.

    Unknown keys, wrong types and out-of-range values are refused with a ValueError in words.
    """
    import tomllib
    from dataclasses import fields

    try:
        with open(path, "rb") as stream:
            data = tomllib.load(stream)
    except FileNotFoundError:
        raise ValueError(f"Recipe file '{path}' not found.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not a valid TOML file: {exc}") from None
    known = [f.name for f in fields(RetrainRecipe)]
    unknown = [key for key in data if key not in known]
    if unknown:
        raise ValueError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(repr(k) for k in unknown)} in the retrain recipe; known keys: {', '.join(known)}.")
    try:
        return RetrainRecipe(**data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def dump_recipe(recipe: RetrainRecipe) -> str:
    """The recipe as TOML text that load_recipe reads back (fields left at None are omitted)."""
    from dataclasses import fields

    lines = []
    for item in fields(recipe):
        value = getattr(recipe, item.name)
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else repr(value)
        lines.append(f"{item.name} = {text}")
    return "\n".join(lines) + "\n"
