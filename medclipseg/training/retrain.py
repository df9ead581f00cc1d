"""Fine-tuning a model on annotators' corrections, and scoring a model on a fixed set of cases.

The torch side of `medclipseg retrain` and the app's Model tab:

- ``fine_tune(parent, examples, recipe, out_dir)`` writes the examples as a scratch dataset in the
  authors' layout, runs stage 2 from ``parent`` with the recipe, and moves the trained model into
  ``out_dir`` (our safetensors format, loadable by ``medclipseg.registry.load_model``). The model
  appears in ``out_dir`` only once training has finished: a cancelled or failed round leaves no
  loadable model there, and the scratch data is removed either way.
- ``score_examples(model, examples, ...)`` predicts every case with a fixed seed (so a version's
  score is reproducible) and reports mean DSC and NSD and how well the image-level uncertainty
  ranks the errors (Spearman of the score against 1 - DSC).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from medclipseg.datasets.layout import IMAGE_FOLDER, LABEL_FOLDER, PROMPTS_FOLDER, SPLIT_FOLDERS, write_prompt_table
from medclipseg.io.png import encode_png
from medclipseg.io.prompts import validate_prompt
from medclipseg.training.config import RetrainRecipe
from medclipseg.training.progress import ProgressClock, ScoringProgress, TrainingCancelled, TrainProgress

__all__ = [
    "TrainingExample",
    "GoldScore",
    "TrainingCancelled",
    "TrainProgress",
    "ScoringProgress",
    "check_examples",
    "fine_tune",
    "score_examples",
    "DEFAULT_UNCERTAINTY_KEY",
    "SCORING_SEED",
]

DEFAULT_UNCERTAINTY_KEY = "mean_entropy_foreground"
# Every case is predicted with this seed, so one model scores the same cases the same way twice.
SCORING_SEED = 0
RETRAIN_METADATA_KEY = "retrain"


@dataclass
class TrainingExample:
    """One corrected case: the image as stored (uint8 [H, W, 3], BGR), its mask (bool [H, W])."""

    image_bgr: np.ndarray
    mask: np.ndarray
    prompt: str
    name: str = ""


@dataclass
class GoldScore:
    """A model's numbers on a fixed set of cases (the gold split)."""

    dsc: float
    nsd: float
    cases: int
    uncertainty_spearman: Optional[float]  # None with fewer than 3 cases or a constant column
    per_case: list = field(default_factory=list)  # dicts: name, prompt, dsc, nsd, score
    model_id: str = ""
    uncertainty_key: str = DEFAULT_UNCERTAINTY_KEY
    num_samples: int = 0
    threshold: float = 0.5
    nsd_tolerance: float = 2.0

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------
# inputs


def check_examples(examples: Sequence[TrainingExample]) -> list:
    """The examples as a list, each checked; ValueError in words for the first bad one."""
    examples = list(examples or ())
    if not examples:
        raise ValueError("No examples given: a round needs at least one corrected case.")
    for index, example in enumerate(examples):
        label = f"example {index + 1}" + (f" ({example.name})" if getattr(example, "name", "") else "")
        if not isinstance(example, TrainingExample):
            raise ValueError(f"{label} is a {type(example).__name__}, not a TrainingExample.")
        image = np.asarray(example.image_bgr)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(f"The image of {label} must be uint8 height x width x 3 (BGR), "
                             f"got {image.dtype} of shape {image.shape}.")
        mask = np.asarray(example.mask)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"The mask of {label} is {mask.shape[0] if mask.ndim else '?'}"
                             f"x{mask.shape[1] if mask.ndim > 1 else '?'} (shape {mask.shape}), but its image is "
                             f"{image.shape[0]}x{image.shape[1]}: mask and image must have the same height and width.")
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise ValueError(f"The mask of {label} must be boolean (or 0/1), got values other than 0 and 1.")
        validate_prompt(example.prompt)
    return examples


def _write_scratch_dataset(examples: list, root: Path) -> None:
    """The examples as the train split of a dataset in the authors' layout (file names by index)."""
    folder = root / SPLIT_FOLDERS["train"]
    (folder / IMAGE_FOLDER).mkdir(parents=True)
    (folder / LABEL_FOLDER).mkdir(parents=True)
    rows = []
    for index, example in enumerate(examples):
        name = f"case{index:06d}.png"
        (folder / IMAGE_FOLDER / name).write_bytes(encode_png(np.ascontiguousarray(example.image_bgr), compression=1))
        label = np.where(np.asarray(example.mask).astype(bool), 255, 0).astype(np.uint8)
        (folder / LABEL_FOLDER / name).write_bytes(encode_png(label, compression=1))
        rows.append({"Image": name, "Description": validate_prompt(example.prompt), "Ground Truth": name})
    # CSV: no spreadsheet library on the training path.
    write_prompt_table(root / PROMPTS_FOLDER / "Train_text.csv", rows)


def _check_out_dir(out_dir) -> Path:
    out_dir = Path(out_dir).expanduser().absolute()
    if not out_dir.name or out_dir.name in (".", ".."):
        raise ValueError(f"'{out_dir}' cannot hold a model: give a folder name.")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"'{out_dir}' already exists and is not an empty folder; a new model needs a new folder.")
    return out_dir


# --------------------------------------------------------------------------------------
# fine-tuning


def fine_tune(parent, examples: Sequence[TrainingExample], recipe: Optional[RetrainRecipe] = None, out_dir=None, *,
              device=None, on_progress: Optional[Callable[[TrainProgress], None]] = None,
              should_stop: Optional[Callable[[], bool]] = None) -> Path:
    """Fine-tune ``parent`` on ``examples`` with ``recipe``; return ``out_dir`` holding the new model.

    parent: any source of ``medclipseg.registry.load_model`` ("demo", a model folder, hf://...), or a
    LoadedModel (its source is used).
    out_dir: a missing or empty folder; it receives config.json and model.safetensors of the last
    epoch, whose metadata records the recipe and the number of examples (``metadata["retrain"]``)
    and the parent's model id (``metadata["init_model_id"]``), beside stage 2's train_config and history.
    on_progress(TrainProgress) after every optimiser step; should_stop() after every step: True
    raises TrainingCancelled, and ``out_dir`` is left without a model.
    """
    from medclipseg.registry import LoadedModel

    if isinstance(parent, LoadedModel):
        parent = parent.source  # reloaded by stage 2 on its own device; the same source names the same id
    recipe = recipe if recipe is not None else RetrainRecipe()
    if not isinstance(recipe, RetrainRecipe):
        raise ValueError(f"recipe must be a RetrainRecipe, got {type(recipe).__name__}.")
    if out_dir is None:
        raise ValueError("Give out_dir, the folder that receives the fine-tuned model.")
    examples = check_examples(examples)
    out_dir = _check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    from medclipseg.training.stage2 import train

    # Beside out_dir, so the finished model is moved into place by a rename on the same disk.
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.retrain-", dir=out_dir.parent))
    try:
        data, run = scratch / "data", scratch / "run"
        _write_scratch_dataset(examples, data)
        config = recipe.train_config(data=str(data), out=str(run), init=str(parent),
                                     device=None if device is None else str(device))
        metadata = {RETRAIN_METADATA_KEY: {"recipe": asdict(recipe), "examples": len(examples),
                                           "parent_source": str(parent)}}
        result = train(config, on_progress=on_progress, should_stop=should_stop, metadata=metadata)
        trained = Path(result["last"])
        if out_dir.exists():
            out_dir.rmdir()  # checked empty above
        os.replace(trained, out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out_dir


# --------------------------------------------------------------------------------------
# scoring


def _predictor(model, device):
    from medclipseg.inference.predictor import Predictor
    from medclipseg.registry import LoadedModel

    if isinstance(model, Predictor):
        return model
    if isinstance(model, LoadedModel):
        return Predictor.from_loaded(model, device=device)
    return Predictor.from_pretrained(str(model), device=device)


def _spearman_or_none(scores: Sequence[float], errors: Sequence[float]) -> Optional[float]:
    from scipy.stats import spearmanr

    scores, errors = np.asarray(scores, float), np.asarray(errors, float)
    if len(scores) < 3 or np.ptp(scores) == 0 or np.ptp(errors) == 0:
        return None
    value = float(spearmanr(scores, errors).statistic)
    return value if math.isfinite(value) else None


def score_examples(model, examples: Sequence[TrainingExample], *, num_samples: int = 8, threshold: float = 0.5,
                   nsd_tolerance: float = 2.0, device=None,
                   uncertainty_key: Union[str, Callable] = DEFAULT_UNCERTAINTY_KEY,
                   on_progress: Optional[Callable[[ScoringProgress], None]] = None,
                   should_stop: Optional[Callable[[], bool]] = None, seed: int = SCORING_SEED) -> GoldScore:
    """Predict every example and score the predicted masks against the examples' masks.

    model: a source of ``load_model``, a ``LoadedModel`` or a ``Predictor``. Each case is predicted
    with ``num_samples`` Monte-Carlo samples and the same ``seed``. DSC and NSD (contour rule,
    ``nsd_tolerance`` px) per case follow medclipseg.metrics (both masks empty: 1). The image-level
    score is ``Prediction.scores[uncertainty_key]``, or ``uncertainty_key(prediction)`` for a
    callable; ``uncertainty_spearman`` is its Spearman correlation with 1 - DSC over the cases.
    should_stop() after every case: True raises TrainingCancelled.
    """
    from medclipseg.metrics import dice_score, normalized_surface_dice

    examples = check_examples(examples)
    predictor = _predictor(model, device)
    key_name = uncertainty_key if isinstance(uncertainty_key, str) else getattr(uncertainty_key, "__name__", "custom")
    clock = ProgressClock(len(examples))
    per_case = []
    for index, example in enumerate(examples):
        prediction = predictor.predict(example.image_bgr, example.prompt, num_samples=num_samples,
                                       threshold=threshold, seed=seed, channel_order="bgr")
        if callable(uncertainty_key):
            score = float(uncertainty_key(prediction))
        elif uncertainty_key in prediction.scores:
            score = float(prediction.scores[uncertainty_key])
        else:
            raise ValueError(f"Unknown uncertainty key {uncertainty_key!r}; the prediction's scores are "
                             f"{', '.join(sorted(prediction.scores))}.")
        truth = np.asarray(example.mask).astype(bool)
        per_case.append({
            "name": example.name, "prompt": example.prompt,
            "dsc": float(dice_score(prediction.mask, truth)),
            "nsd": float(normalized_surface_dice(prediction.mask, truth, tolerance=nsd_tolerance)),
            "score": score,
        })
        if on_progress is not None:
            elapsed, eta = clock.times(index + 1)
            on_progress(ScoringProgress(case=index + 1, total_cases=len(examples), elapsed_seconds=elapsed,
                                        eta_seconds=eta))
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"scoring stopped on request after case {index + 1} of {len(examples)}")
    dsc = [case["dsc"] for case in per_case]
    return GoldScore(
        dsc=float(np.mean(dsc)), nsd=float(np.mean([case["nsd"] for case in per_case])), cases=len(per_case),
        uncertainty_spearman=_spearman_or_none([case["score"] for case in per_case], [1.0 - d for d in dsc]),
        per_case=per_case, model_id=predictor.model_id, uncertainty_key=key_name, num_samples=int(num_samples),
        threshold=float(threshold), nsd_tolerance=float(nsd_tolerance),
    )
