"""Evaluation over a split of the authors' layout: DSC, NSD and uncertainty per image."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from medclipseg.datasets.layout import Sample
from medclipseg.io.images import read_mask
from medclipseg.evaluation.metrics import dice_score, normalized_surface_dice, resize_prediction_to


def evaluate_samples(
    predictor,
    samples: Sequence[Sample],
    num_samples: int = 30,
    threshold: float = 0.5,
    seed: Optional[int] = 0,
    nsd_tolerance: float = 2.0,
    progress: bool = True,
) -> dict:
    """Per image: the prediction is resized (nearest) to the ground-truth size, then scored."""
    rows = []
    started = time.perf_counter()
    for sample in tqdm(samples, desc="evaluate", disable=not progress, leave=False):
        prediction = predictor.predict(sample.image_path, sample.prompt, num_samples=num_samples,
                                       threshold=threshold, seed=seed)
        truth = read_mask(sample.mask_path)
        predicted = resize_prediction_to(prediction.mask, truth.shape)
        rows.append({
            "image": sample.image_name,
            "prompt": sample.prompt,
            "dsc": dice_score(predicted, truth),
            "nsd": normalized_surface_dice(predicted, truth, tolerance=nsd_tolerance),
            "seconds": prediction.seconds,
            **{k: v for k, v in prediction.scores.items() if k.startswith(("mean_", "mutual"))},
        })
    summary = {
        "images": len(rows),
        "mean_dsc": float(np.mean([r["dsc"] for r in rows])) if rows else float("nan"),
        "mean_nsd": float(np.mean([r["nsd"] for r in rows])) if rows else float("nan"),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return {"summary": summary, "per_image": rows}


def write_results(results: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path
