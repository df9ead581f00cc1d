"""Evaluation of a model on samples of the authors' layout: DSC, both NSDs and uncertainty per image.

One function, :func:`evaluate_samples`, scores every sample; `medclipseg evaluate` writes its
result as JSON and the results report (:mod:`medclipseg.evaluation.report`) builds its tables
from the same rows.

Per image: the prediction's mask (p > threshold) is resized (nearest) to the ground-truth size,
then scored with DSC, the 2-D contour NSD (``nsd``) and the NSD as the MedCLIPSeg authors compute
it (``nsd_authors``, the paper's rule), both at ``nsd_tolerance`` pixels.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from medclipseg.datasets.layout import Sample
from medclipseg.evaluation.metrics import (
    PixelUncertaintyStats,
    dice_score,
    normalized_surface_dice,
    resize_prediction_to,
)
from medclipseg.io.masks import read_mask

__all__ = ["coverage", "evaluate_samples", "modality_of", "selection_correct", "write_results"]


# -- what a phantom manifest adds -------------------------------------------------------------

def modality_of(image_name: str, record: Optional[dict]) -> str:
    if record and record.get("modality"):
        return record["modality"]
    match = re.match(r"(.+?)_\d+", Path(image_name).stem)
    return match.group(1) if match else "all"


def coverage(predicted: np.ndarray, target: np.ndarray) -> float:
    area = target.sum()
    return float((predicted & target).sum() / area) if area else float("nan")


def selection_correct(predicted: np.ndarray, described: np.ndarray, others: list) -> bool:
    """The mask covers at least half of the described target and less than half of every other."""
    return coverage(predicted, described) >= 0.5 and all(coverage(predicted, o) < 0.5 for o in others)


# -- evaluation -------------------------------------------------------------------------------

def _mean(rows: list, key: str) -> float:
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")


def evaluate_samples(
    predictor,
    samples: Sequence[Sample],
    num_samples: int = 30,
    threshold: float = 0.5,
    seed: Optional[int] = 0,
    nsd_tolerance: float = 2.0,
    progress: bool = True,
    *,
    manifest: Optional[dict] = None,
    pixel_stats: Optional[PixelUncertaintyStats] = None,
    label: str = "evaluate",
) -> dict:
    """Predict and score every sample; returns ``{"summary": ..., "per_image": [row, ...]}``.

    A row holds image, ground truth, prompt, modality, dsc, nsd, nsd_authors, the prediction's
    seconds and its image-level uncertainty scores (``mean_*``, ``mutual_*``). With a phantom
    ``manifest`` (:func:`medclipseg.phantoms.writer.records_by_row`), rows of selection cases
    also say whether the text picked the described target (``selection_correct``).
    ``pixel_stats`` accumulates the pixel-level uncertainty quality (entropy AUROC,
    calibration) over all images.
    """
    manifest = manifest or {}
    rows = []
    started = time.perf_counter()
    for sample in tqdm(samples, desc=label, disable=not progress, leave=False):
        record = manifest.get((sample.image_name, sample.mask_path.name))
        prediction = predictor.predict(sample.image_path, sample.prompt, num_samples=num_samples,
                                       threshold=threshold, seed=seed)
        truth = read_mask(sample.mask_path)
        predicted = resize_prediction_to(prediction.mask, truth.shape)
        row = {
            "image": sample.image_name,
            "ground_truth": sample.mask_path.name,
            "prompt": sample.prompt,
            "modality": modality_of(sample.image_name, record),
            "dsc": dice_score(predicted, truth),
            "nsd": normalized_surface_dice(predicted, truth, tolerance=nsd_tolerance),
            "nsd_authors": normalized_surface_dice(predicted, truth, tolerance=nsd_tolerance, rule="authors"),
            "seconds": prediction.seconds,
            **{k: v for k, v in prediction.scores.items() if k.startswith(("mean_", "mutual"))},
        }
        if record and record.get("selection") and record.get("other_targets"):
            folder = sample.mask_path.parent.parent / "targets"
            others = [resize_prediction_to(read_mask(folder / name), truth.shape)
                      for name in record["other_targets"]]
            row["selection_correct"] = selection_correct(predicted, truth, others)
        if pixel_stats is not None:
            probability = resize_prediction_to(prediction.probability, truth.shape)
            entropy = resize_prediction_to(prediction.entropy, truth.shape)
            pixel_stats.add(probability, entropy, truth)
        rows.append(row)
    summary = {
        "images": len(rows),
        "mean_dsc": _mean(rows, "dsc"),
        "mean_nsd": _mean(rows, "nsd"),
        "mean_nsd_authors": _mean(rows, "nsd_authors"),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return {"summary": summary, "per_image": rows}


def write_results(results: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path
