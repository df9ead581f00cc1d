"""Does the model's uncertainty map predict where raters disagree? On a multi-rater set built from packages.

    python benchmarks/rater_disagreement_study.py              # every 4th axial slice (docs/study.md)
    python benchmarks/rater_disagreement_study.py --quick      # every 16th slice, 4 samples: a smoke check
    python benchmarks/rater_disagreement_study.py --report docs/study/rater_disagreement.json   # tables again

The set. One real T1 (Colin27, Debian's mricron-data) and, as its "raters", the independent
labellings of the same structures that ship beside it, resampled onto the T1's grid (nearest
neighbour, through their own affines, in world space):

* brain: the brain extraction ch2bet (> 0), the union of every AAL label, the union of every
  AICHA label;
* caudate, putamen, thalamus: AAL's and AICHA's labels of the structure (left and right together).

These raters are atlases drawn on other brains and warped to this one, not people drawing on
this image: their disagreement is mostly registration and definition (where the cortex ends,
which voxels of a nucleus the atlas's population covers), concentrated along boundaries, as
people's is, but not caused by what the image shows. Two raters per nucleus, three for the brain.

The model: the shipped demo model, zero-shot, with the prompt the real-data set uses
("Putamen in the brain MRI image."), 8 Monte-Carlo samples per slice (the app's volume default).

Measures, per case (one slice x structure where some rater marks the structure):

* pixel AUROC: how well the model's predictive entropy ranks the pixels where the raters are not
  unanimous above those where they are (the app's own measure,
  medclipseg.team.agreement.uncertainty_vs_disagreement, tested against sklearn's roc_auc_score);
  the baseline ranks pixels by
  closeness to the model's own predicted boundary (minus the distance, scipy's EDT), since the
  entropy of any segmenter is highest there;
* pixel Spearman: between the entropy and the raters' vote entropy (binary entropy of the share
  of raters marking the pixel; scipy's spearmanr);
* over the cases of one structure: Spearman between the case's band entropy (the queue's score)
  and its disagreement, 1 - mean pairwise Dice of the raters (medclipseg.team.agreement).

Output: ``docs/study/rater_disagreement.json`` (every case), ``.md`` (tables) and the figure
``docs/images/study-rater-disagreement.png``. The last line printed is the summary.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEMPLATES = Path("/usr/share/mricron/templates")
OUT_JSON = ROOT / "docs" / "study" / "rater_disagreement.json"
FIGURE = ROOT / "docs" / "images" / "study-rater-disagreement.png"
AICHA_NAMES = {"caudate": "N_Caudate", "putamen": "N_Putamen", "thalamus": "N_Thalamus"}
STRUCTURE_NAMES = ("brain", "caudate", "putamen", "thalamus")


def _labels(path: Path) -> dict:
    """AICHA's label table: name -> the voxel value (its .txt lists 'value name colour-index'; the
    first column is what the image holds: AICHA's putamen on it overlaps AAL's at Dice 0.66, the
    third column's at 0.36)."""
    numbers = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            numbers[parts[1]] = int(parts[0])
    return numbers


def raters_on_t1_grid(volumes) -> dict:
    """{structure: {rater: bool volume on the T1's RAS grid}}."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    from medclipseg.datasets.realdata import STRUCTURES, structure_mask

    target = (volumes.t1.shape, volumes.affine)
    aicha_image = nib.load(str(TEMPLATES / "AICHAmc.nii.gz"))
    aicha = np.rint(np.asanyarray(resample_from_to(aicha_image, target, order=0).dataobj)).astype(np.int32)
    aicha_numbers = _labels(TEMPLATES / "AICHAmc.nii.txt")
    raters = {"brain": {"ch2bet": volumes.brain, "AAL": volumes.atlas > 0, "AICHA": aicha > 0}}
    for name in STRUCTURE_NAMES[1:]:
        prefix = AICHA_NAMES[name]
        numbers = [number for label, number in aicha_numbers.items() if label.startswith(prefix + "-")]
        raters[name] = {"AAL": structure_mask(volumes, STRUCTURES[name]), "AICHA": np.isin(aicha, numbers)}
    return raters


def case_measures(probability: np.ndarray, entropy: np.ndarray, masks: list) -> dict:
    """The app's own measures (medclipseg.team.agreement.uncertainty_vs_disagreement) and the
    boundary baseline's AUROC on the same disputed pixels."""
    from scipy.ndimage import binary_erosion, distance_transform_edt

    from medclipseg.team.agreement import agreement, pixel_auroc, uncertainty_vs_disagreement

    votes = np.mean(np.stack(masks), axis=0)
    disputed = (votes > 0) & (votes < 1)
    predicted = probability >= 0.5
    boundary = predicted & ~binary_erosion(predicted)  # the predicted mask's own edge pixels
    closeness = -distance_transform_edt(~boundary) if boundary.any() else np.zeros_like(entropy)
    measured = uncertainty_vs_disagreement(entropy, masks)
    found = agreement({f"r{i}": mask for i, mask in enumerate(masks)}, method="majority")
    return {"disputed_pixels": measured["disputed_pixels"], "disagreement": found.disagreement,
            "auroc": measured["pixel_auroc"], "auroc_boundary_baseline": pixel_auroc(closeness, disputed),
            "pixel_spearman": measured["pixel_spearman"]}


def run(stride: int, samples: int) -> dict:
    from medclipseg.datasets.realdata import (STRUCTURES, apply_window, axial_slice, intensity_window,
                                              load_volumes)
    from medclipseg.inference.predictor import Predictor

    started = time.perf_counter()
    volumes = load_volumes(TEMPLATES)
    raters = raters_on_t1_grid(volumes)
    low, high = intensity_window(volumes.t1, volumes.brain)
    predictor = Predictor.from_pretrained("demo", device="cpu")
    cases = []
    for name in STRUCTURE_NAMES:
        structure = STRUCTURES[name]
        union = np.any(np.stack(list(raters[name].values())), axis=0)
        zs = np.nonzero(union.any(axis=(0, 1)))[0]
        for z in range(int(zs.min()), int(zs.max()) + 1, stride):
            masks = [axial_slice(volume, z) for volume in raters[name].values()]
            if not any(mask.any() for mask in masks):
                continue
            grey = apply_window(axial_slice(volumes.t1, z), low, high)
            prediction = predictor.predict(np.repeat(grey[:, :, None], 3, axis=2), structure.prompt(True),
                                           num_samples=samples, seed=z)
            measures = case_measures(prediction.probability, prediction.entropy, masks)
            measures.update(structure=name, slice=int(z), raters=list(raters[name]),
                            band_entropy=float(prediction.scores["band_entropy"]))
            cases.append(measures)
    return {"stride": stride, "samples": samples, "model": predictor.model_id, "cases": cases,
            "seconds": time.perf_counter() - started}


def summarise(result: dict) -> dict:
    from scipy.stats import spearmanr

    table = {}
    for name in STRUCTURE_NAMES:
        rows = [case for case in result["cases"] if case["structure"] == name]
        scored = [case for case in rows if case["auroc"] is not None]
        spear = [case["pixel_spearman"] for case in rows if case["pixel_spearman"] is not None]
        level = spearmanr([c["band_entropy"] for c in rows], [c["disagreement"] for c in rows]).statistic \
            if len(rows) >= 3 else None
        table[name] = {
            "cases": len(rows), "raters": len(rows[0]["raters"]) if rows else 0,
            "median_auroc": float(np.median([c["auroc"] for c in scored])) if scored else None,
            "median_auroc_boundary_baseline": float(np.median([c["auroc_boundary_baseline"] for c in scored]))
            if scored else None,
            "median_pixel_spearman": float(np.median(spear)) if spear else None,
            "case_spearman_band_entropy_vs_disagreement": None if level is None or not np.isfinite(level)
            else float(level),
            "mean_disagreement": float(np.mean([c["disagreement"] for c in rows])) if rows else None}
    return table


def report(result: dict) -> str:
    table = summarise(result)
    lines = ["| structure | raters | cases | median pixel AUROC (entropy) | median AUROC (boundary baseline) | "
             "median pixel Spearman | case Spearman (band entropy vs 1 - Dice) | mean 1 - Dice |",
             "|---|---|---|---|---|---|---|---|"]

    def f(value):
        return "n/a" if value is None else f"{value:.3f}"

    for name, row in table.items():
        lines.append(f"| {name} | {row['raters']} | {row['cases']} | {f(row['median_auroc'])} | "
                     f"{f(row['median_auroc_boundary_baseline'])} | {f(row['median_pixel_spearman'])} | "
                     f"{f(row['case_spearman_band_entropy_vs_disagreement'])} | {f(row['mean_disagreement'])} |")
    return "\n".join(lines)


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [n for n in STRUCTURE_NAMES if any(c["structure"] == n and c["auroc"] is not None
                                              for c in result["cases"])]
    entropy = [[c["auroc"] for c in result["cases"] if c["structure"] == n and c["auroc"] is not None] for n in names]
    baseline = [[c["auroc_boundary_baseline"] for c in result["cases"] if c["structure"] == n and c["auroc"] is not None]
                for n in names]
    positions = np.arange(len(names))
    left.boxplot(entropy, positions=positions - 0.18, widths=0.3, patch_artist=True,
                 boxprops={"facecolor": "#f2b134"})
    left.boxplot(baseline, positions=positions + 0.18, widths=0.3, patch_artist=True,
                 boxprops={"facecolor": "#9ec5e8"})
    left.axhline(0.5, color="grey", lw=0.8, ls="--")
    left.set_xticks(positions, names)
    left.set_ylabel("pixel AUROC for 'raters disagree here'")
    left.set_title("Per slice: model entropy (amber) vs\ncloseness to the predicted boundary (blue)")
    for name, colour in zip(STRUCTURE_NAMES, ("#4c72b0", "#dd8452", "#55a868", "#c44e52")):
        rows = [c for c in result["cases"] if c["structure"] == name]
        right.scatter([c["band_entropy"] for c in rows], [c["disagreement"] for c in rows], s=14, label=name,
                      color=colour)
    right.set_xlabel("case band entropy (the queue's score)")
    right.set_ylabel("1 - mean pairwise Dice of the raters")
    right.set_title("Per slice: model uncertainty vs raters' disagreement")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every 16th slice, 4 samples; writes nothing")
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--report", type=Path, help="print the tables of an earlier run's JSON")
    args = parser.parse_args(argv)
    if args.report:
        result = json.loads(args.report.read_text())
    else:
        stride, samples = (16, 4) if args.quick else (args.stride, args.samples)
        result = run(stride, samples)
        if not args.quick:
            OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
            OUT_JSON.write_text(json.dumps(result, indent=1) + "\n")
            (OUT_JSON.with_suffix(".md")).write_text(report(result) + "\n")
            figure(result, FIGURE)
    print(report(result))
    table = summarise(result)
    print(" ".join(f"{name}_auroc={'n/a' if row['median_auroc'] is None else format(row['median_auroc'], '.3f')}"
                   for name, row in table.items()) + f" cases={len(result['cases'])} seconds={result['seconds']:.0f}")


if __name__ == "__main__":
    main()
