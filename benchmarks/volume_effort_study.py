"""Correcting volumes: the slices drawn by hand against 3-D DSC, for interpolation, propagation and the model.

    python benchmarks/volume_effort_study.py            # 5 structures, k = 1, 3, 5, 7, 10, 3 seeds (docs/study.md)
    python benchmarks/volume_effort_study.py --quick    # 2 structures, k = 1, 3, 1 tiny seed: a smoke check
    python benchmarks/volume_effort_study.py --report docs/study/volume_effort.json   # tables and plot again

A simulated annotator corrects a whole real volume: it draws ``k`` slices by hand (the true mask on
those slices) and lets a tool fill in the rest. The scan is the Colin27 T1 with its AAL structures,
loaded, reoriented to RAS and reduced to 2 mm voxels by ``benchmarks/volume_study.py`` (90 axial
slices of 108 x 90 pixels), as one ``ScanVolume`` (modality MR). Every array below is in display
order ``[slice, row, column]`` (axial slices).

Drawn slices (:func:`drawn_slices`), over the structure's extent ``lo..hi`` (the first and last
slice where its true mask is not empty):

* k = 1: the slice of largest true area (the lowest index on a tie);
* k >= 2: ``floor(lo + i * (hi - lo) / (k - 1) + 0.5)`` for i = 0 .. k-1, repeats dropped: both end
  slices and k-2 evenly spaced between them (fewer than k when the extent has fewer slices).

Methods (each starts from an empty volume with the drawn slices set to the truth):

* ``interpolation``: :func:`medclipseg.annotation.volume_tools.interpolate_slices` between the drawn
  slices; slices outside the drawn range stay empty (k = 1: the drawn slice alone).
* ``propagation``: the default. From every non-empty drawn slice, ``propagate`` both ways through
  the model's probability map with ``locked`` = the drawn slices and the default limits (band
  entropy 0.45 nats, area change 50 %, 3 mm dilation). A slice reached from two drawn slices takes
  the mask from the nearer one (the lower one on a tie). Then every run of slices left unwritten
  between two written slices (only possible between drawn slices, where the two propagation fronts
  stopped) is filled by ``interpolate_slices`` between the written slices on either side. Slices
  beyond the outermost propagation stops stay empty.
* ``propagation_no_stop``: the same with ``max_band_entropy=None, max_area_change=None``: propagation
  only stops at a drawn slice, an empty candidate or the end of the volume.
* ``model``: the prediction thresholded at 0.5 on every slice, the drawn slices pasted in.

Score: 3-D DSC (``medclipseg.metrics.dice_3d``) against the truth over the whole volume.

Models: the shipped demo model (zero-shot), and the demo model after one retraining round on
another part of the volume. The volume is cut once along z at the slice ``z*`` that best splits
the deep structures (the one maximising, over the deep structures, the smallest share of a
structure's voxels on either side). One round (``fine_tune``, the product's RetrainRecipe with
``--epochs`` and the seed) trains a model on the true masks of every structure on the slices below
z* (each structure's slices plus ``--margin`` empty slices beyond its ends, with its prompt), a
second model on the slices from z* up. Each half is then predicted by the model trained on the
other half, and the two halves make one probability/entropy map per structure: no slice is ever
predicted by a model that saw it. Every method runs on that map with the same drawn slices, so the
two models' rows are comparable. Randomness enters only through the retraining (seeds); the
Monte-Carlo predictions use seed 0.

Writes <out>/volume_effort.json and <out>/volume_effort.md and the plot (``--image``); the last line
printed is a summary. Torch runs on one CPU thread by default (``--threads``), as in volume_study.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from medclipseg.annotation.volume_tools import (
    DRAWN,
    INTERPOLATED,
    PREDICTED,
    PROPAGATED,
    empty_provenance,
    interpolate_slices,
    merge_provenance,
    propagate,
)

try:  # run as a script (benchmarks/ on the path) or imported from the repository root
    from volume_study import VolumeCase, dice, load_colin27, slice_examples
except ImportError:  # pragma: no cover
    from benchmarks.volume_study import VolumeCase, dice, load_colin27, slice_examples

METHODS = ("interpolation", "propagation", "propagation_no_stop", "model")
DEFAULT_METHOD = "propagation"
METHOD_LABELS = {"interpolation": "interpolation only", "propagation": "propagation + stop (default)",
                 "propagation_no_stop": "propagation, no stop", "model": "model alone"}
STRUCTURE_NAMES = ("brain", "caudate", "putamen", "thalamus", "hippocampus")
LARGE = ("brain",)
TARGETS = {"large": 0.90, "deep": 0.80}  # the 3-D DSC targets
TARGET_FRACTION = 0.10                   # ... with at most this share of the slices drawn
THRESHOLD = 0.5


@dataclass
class EffortStudyConfig:
    structures: Sequence[str] = STRUCTURE_NAMES
    ks: Sequence[int] = (1, 3, 5, 7, 10)
    seeds: Sequence[int] = (0, 1, 2)
    epochs: int = 12             # the retraining round (RetrainRecipe's default)
    num_samples: int = 8         # Monte-Carlo samples of every prediction (predict_volume's default)
    margin: int = 2              # empty slices beyond a structure's ends in its training examples
    retrain: bool = True
    device: str = "cpu"
    threads: int = 1


# ------------------------------------------------------------------------------------ the rules


def structure_extent(truth: np.ndarray) -> tuple:
    """(lo, hi): the first and last display slice where the mask is not empty."""
    occupied = np.flatnonzero(np.asarray(truth, bool).any(axis=(1, 2)))
    if occupied.size == 0:
        raise ValueError("the structure is empty")
    return int(occupied[0]), int(occupied[-1])


def drawn_slices(truth: np.ndarray, k: int) -> list:
    """The slices the annotator draws (module docstring): k = 1 the largest area; else both ends of
    the extent and k-2 evenly spaced between them (rounded half up, repeats dropped)."""
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be 1 or more, got {k}")
    truth = np.asarray(truth, bool)
    lo, hi = structure_extent(truth)
    if k == 1:
        return [int(np.argmax(truth.sum(axis=(1, 2))))]
    return sorted({int(np.floor(lo + i * (hi - lo) / (k - 1) + 0.5)) for i in range(k)})


def _with_drawn(truth: np.ndarray, drawn: Sequence[int]) -> np.ndarray:
    mask = np.zeros(truth.shape, dtype=bool)
    mask[list(drawn)] = truth[list(drawn)]
    return mask


def fill_interpolation(truth: np.ndarray, drawn: Sequence[int], spacing=None) -> tuple:
    """(mask, provenance): the drawn slices, and interpolate_slices between them; nothing outside."""
    mask = _with_drawn(truth, drawn)
    provenance = merge_provenance(empty_provenance(truth.shape[0]), {s: DRAWN for s in drawn})
    if len(set(drawn)) >= 2:
        mask, filled = interpolate_slices(mask, drawn, spacing)
        provenance = merge_provenance(provenance, {s: INTERPOLATED for s in filled})
    return mask, provenance


def fill_propagation(truth: np.ndarray, drawn: Sequence[int], probability: np.ndarray, entropy: Optional[np.ndarray],
                     spacing=None, *, stop: bool = True) -> tuple:
    """(mask, provenance, stop codes): propagation from every drawn slice, the gaps interpolated
    (module docstring). ``stop=False`` switches the band-entropy and area-change limits off."""
    drawn = sorted({int(s) for s in drawn})
    base = _with_drawn(truth, drawn)
    limits = {} if stop else dict(max_band_entropy=None, max_area_change=None)
    taken: dict = {}  # slice -> (distance to its drawn slice, mask)
    stops: list = []
    for start in drawn:
        if not base[start].any():
            continue  # nothing to carry (an empty drawn slice inside a gap of the structure)
        result = propagate(base, probability, entropy, start, direction="both", threshold=THRESHOLD,
                           spacing=spacing, locked=drawn, **limits)
        stops.extend(item.code for item in result.stops)
        for s in result.filled:
            distance = abs(s - start)
            if s not in taken or distance < taken[s][0]:  # drawn slices come in order: ties keep the lower
                taken[s] = (distance, result.mask[s])
    mask = base.copy()
    for s, (_, values) in taken.items():
        mask[s] = values
    provenance = merge_provenance(empty_provenance(truth.shape[0]), {s: DRAWN for s in drawn})
    provenance = merge_provenance(provenance, {s: PROPAGATED for s in taken})
    written = sorted(set(drawn) | set(taken))
    if len(written) >= 2:
        mask, filled = interpolate_slices(mask, written, spacing)
        provenance = merge_provenance(provenance, {s: INTERPOLATED for s in filled})
    return mask, provenance, stops


def fill_model(truth: np.ndarray, drawn: Sequence[int], probability: np.ndarray) -> tuple:
    """(mask, provenance): the model's mask (probability > 0.5), the drawn slices pasted in."""
    mask = np.asarray(probability) > THRESHOLD
    mask[list(drawn)] = truth[list(drawn)]
    provenance = merge_provenance([PREDICTED] * truth.shape[0], {s: DRAWN for s in drawn})
    return mask, provenance


def run_methods(truth: np.ndarray, drawn: Sequence[int], probability: np.ndarray, entropy: np.ndarray,
                spacing=None) -> dict:
    """{method: {"dsc", "slices": {provenance: count}, ("stops")}} for one structure, model and k."""
    out = {}
    for method in METHODS:
        stops = None
        if method == "interpolation":
            mask, provenance = fill_interpolation(truth, drawn, spacing)
        elif method == "model":
            mask, provenance = fill_model(truth, drawn, probability)
        else:
            mask, provenance, stops = fill_propagation(truth, drawn, probability, entropy, spacing,
                                                       stop=method == "propagation")
        counts = {name: sum(1 for p in provenance if p == name) for name in (DRAWN, PROPAGATED, INTERPOLATED,
                                                                           PREDICTED)}
        out[method] = {"dsc": dice(mask, truth), "slices": {k: v for k, v in counts.items() if v}}
        if stops is not None:
            out[method]["stops"] = {code: stops.count(code) for code in sorted(set(stops))}
    return out


def split_slice(truths: dict, deep: Sequence[str]) -> int:
    """z*: halves are slices < z* and >= z*; the z* maximising, over the deep structures, the
    smallest share of a structure's voxels on either side (the lowest z* on a tie)."""
    names = list(deep) or list(truths)
    depth = next(iter(truths.values())).shape[0]
    per_slice = {name: truths[name].sum(axis=(1, 2)).astype(np.float64) for name in names}
    best, best_value = 1, -1.0
    for z in range(1, depth):
        value = min(min(v[:z].sum(), v[z:].sum()) / v.sum() for v in per_slice.values())
        if value > best_value:
            best, best_value = z, value
    return best


def training_slices(truth: np.ndarray, half: range, margin: int) -> list:
    """The slices of ``half`` within ``margin`` slices of the structure's extent."""
    lo, hi = structure_extent(truth)
    return [s for s in half if lo - margin <= s <= hi + margin]


# ------------------------------------------------------------------------------------ the models


def predict_maps(predictor, volume, prompt: str, slices: Optional[range], window: tuple, config) -> tuple:
    """(probability, entropy) float32 display maps of ``slices`` (None: all) predicted by ``predictor``;
    other slices are NaN. The slab is windowed with the whole volume's window."""
    from medclipseg.inference.volume import predict_volume
    from medclipseg.io.volumes import ScanVolume

    shape = volume.to_display().shape
    probability = np.full(shape, np.nan, dtype=np.float32)
    entropy = np.full(shape, np.nan, dtype=np.float32)
    slices = range(shape[0]) if slices is None else slices
    if len(slices) == 0:
        return probability, entropy
    # Which array z each display slice is (an axial display is a re-ordering along the array's z).
    z_of_slice = volume.to_display(np.broadcast_to(np.arange(volume.shape[2]), volume.shape))[:, 0, 0]
    zs = sorted(int(z_of_slice[s]) for s in slices)
    z0, z1 = zs[0], zs[-1] + 1
    if z1 - z0 != len(zs):
        raise ValueError("the slices to predict are not one slab")
    shift = np.eye(4)
    shift[2, 3] = z0
    slab = ScanVolume(array=np.ascontiguousarray(volume.array[:, :, z0:z1]), affine=volume.affine @ shift,
                      modality=volume.modality, name=f"slab_z{z0:03d}.nii.gz")
    prediction = predict_volume(predictor, slab, prompt, num_samples=config.num_samples, seed=0, window=window)
    slab_z = slab.to_display(np.broadcast_to(np.arange(slab.shape[2]), slab.shape))[:, 0, 0] + z0
    where = {int(z): s for s, z in enumerate(z_of_slice)}
    rows = [where[int(z)] for z in slab_z]
    probability[rows] = prediction.display("probability").astype(np.float32)
    entropy[rows] = prediction.display("entropy").astype(np.float32)
    return probability, entropy


def retrain_half(volume, truths: dict, prompts: dict, half: range, config, seed: int, folder: Path) -> tuple:
    """(Predictor, example count): the demo model after one round on the true masks of ``half``."""
    from medclipseg.inference.predictor import Predictor
    from medclipseg.training.config import RetrainRecipe
    from medclipseg.training.retrain import fine_tune

    examples = []
    for name, truth in truths.items():
        case = VolumeCase(name=f"colin27-{name}", scan="colin27", slab="colin27", z_mm=(0.0, 0.0), structure=name,
                          present=True, prompt=prompts[name], split="train", volume=volume,
                          truth=volume.from_display(truth))
        every = slice_examples(case)
        examples += [every[s] for s in training_slices(truth, half, config.margin)]
    recipe = replace(RetrainRecipe(), epochs=config.epochs, seed=int(seed))
    model = fine_tune("demo", examples, recipe, folder, device=config.device)
    return Predictor.from_pretrained(str(model), device=config.device), len(examples)


# ------------------------------------------------------------------------------------ the study


def run_study(config: EffortStudyConfig, log=print, on_seed=None) -> dict:
    import torch

    from medclipseg.datasets.realdata import STRUCTURES
    from medclipseg.inference.predictor import Predictor
    from medclipseg.inference.volume import volume_window
    from medclipseg.io.volumes import ScanVolume

    if config.threads:
        torch.set_num_threads(int(config.threads))
    started = time.perf_counter()
    scan = load_colin27()
    volume = ScanVolume(array=np.ascontiguousarray(scan.array), affine=scan.affine, modality="MR",
                        name="colin27_2mm.nii.gz")
    spacing = tuple(float(v) for v in volume.display_spacing())
    window = volume_window(volume)
    truths = {name: np.ascontiguousarray(volume.to_display(scan.masks[name])) for name in config.structures}
    prompts = {name: STRUCTURES[name].prompt(True) for name in config.structures}
    depth = truths[config.structures[0]].shape[0]
    deep = [name for name in config.structures if name not in LARGE]
    z_split = split_slice(truths, deep)
    lower, upper = range(0, z_split), range(z_split, depth)
    structures = {}
    for name, truth in truths.items():
        lo, hi = structure_extent(truth)
        per_slice = truth.sum(axis=(1, 2))
        structures[name] = {
            "prompt": prompts[name], "voxels": int(truth.sum()), "lo": lo, "hi": hi, "span": hi - lo + 1,
            "voxels_below_split": int(per_slice[:z_split].sum()), "voxels_from_split": int(per_slice[z_split:].sum()),
            "drawn": {str(k): drawn_slices(truth, k) for k in config.ks}}
    log(f"Colin27 {volume.to_display().shape} display voxels of {spacing} mm; split at slice {z_split}; "
        + ", ".join(f"{n} {s['lo']}-{s['hi']} ({s['span']} slices)" for n, s in structures.items()))

    def evaluate(maps: dict) -> dict:
        return {name: {str(k): run_methods(truths[name], structures[name]["drawn"][str(k)], *maps[name], spacing)
                       for k in config.ks}
                for name in config.structures}

    def model_only(maps: dict) -> dict:  # the prediction alone, no slice drawn: for context
        return {name: dice(maps[name][0] > THRESHOLD, truths[name]) for name in config.structures}

    study = {"config": asdict(config), "scan": {"name": "colin27", "display_shape": list(volume.to_display().shape),
                                                 "spacing_mm": list(spacing), "depth": depth, "window": list(window)},
             "split_slice": z_split, "structures": structures, "methods": list(METHODS), "default": DEFAULT_METHOD}
    moment = time.perf_counter()
    base = Predictor.from_pretrained("demo", device=config.device)
    maps = {name: predict_maps(base, volume, prompts[name], None, window, config) for name in config.structures}
    study["base"] = {"model": base.model_id, "model_only_dsc": model_only(maps), "results": evaluate(maps),
                     "seconds": time.perf_counter() - moment}
    log(f"base model ({base.model_id}): predicted and scored in {study['base']['seconds']:.0f} s; "
        + ", ".join(f"{n} {study['base']['results'][n][str(config.ks[-1])][DEFAULT_METHOD]['dsc']:.3f}"
                    for n in config.structures) + f" (default method, k={config.ks[-1]})")
    study["retrained"] = []
    study["seconds"] = time.perf_counter() - started
    if on_seed is not None:
        on_seed(study)
    if not config.retrain:
        return study
    work = Path(tempfile.mkdtemp(prefix="medclipseg-volume-effort-"))
    try:
        for seed in config.seeds:
            moment = time.perf_counter()
            below, n_below = retrain_half(volume, truths, prompts, lower, config, seed, work / f"seed{seed}-below")
            above, n_above = retrain_half(volume, truths, prompts, upper, config, seed, work / f"seed{seed}-above")
            trained = time.perf_counter()
            maps = {}
            for name in config.structures:
                # Each half by the model trained on the other half.
                p_low, e_low = predict_maps(above, volume, prompts[name], lower, window, config)
                p_up, e_up = predict_maps(below, volume, prompts[name], upper, window, config)
                maps[name] = (np.where(np.isnan(p_low), p_up, p_low), np.where(np.isnan(e_low), e_up, e_low))
            predicted = time.perf_counter()
            results = evaluate(maps)
            study["retrained"].append({
                "seed": seed, "examples": {"below": n_below, "from_split": n_above},
                "model_only_dsc": model_only(maps), "results": results,
                "seconds": {"retrain": trained - moment, "predict": predicted - trained,
                            "total": time.perf_counter() - moment}})
            log(f"seed {seed}: retrained on {n_below} + {n_above} slices in {trained - moment:.0f} s, predicted "
                f"in {predicted - trained:.0f} s; "
                + ", ".join(f"{n} {results[n][str(config.ks[-1])][DEFAULT_METHOD]['dsc']:.3f}"
                            for n in config.structures) + f" (default method, k={config.ks[-1]})")
            study["seconds"] = time.perf_counter() - started
            if on_seed is not None:
                on_seed(study)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    study["seconds"] = time.perf_counter() - started
    return study


# ------------------------------------------------------------------------------------ report


def retrained_dsc(study: dict, name: str, k, method: str) -> np.ndarray:
    return np.array([run["results"][name][str(k)][method]["dsc"] for run in study["retrained"]])


def fractions(study: dict, name: str, k) -> tuple:
    """(slices drawn, share of the structure's span, share of the volume's depth)."""
    drawn = len(study["structures"][name]["drawn"][str(k)])
    return drawn, drawn / study["structures"][name]["span"], drawn / study["scan"]["depth"]


def k_at_fraction(study: dict, name: str, of: str) -> Optional[int]:
    """The largest k of the grid with at most TARGET_FRACTION of the slices drawn ("span" or "depth")."""
    index = 1 if of == "span" else 2
    ks = [k for k in study["config"]["ks"] if fractions(study, name, k)[index] <= TARGET_FRACTION + 1e-9]
    return max(ks) if ks else None


def default_dsc(study: dict, name: str, k) -> float:
    """The default method's DSC: the retrained model's mean over seeds (the base model without retraining)."""
    if study["retrained"]:
        return float(retrained_dsc(study, name, k, DEFAULT_METHOD).mean())
    return float(study["base"]["results"][name][str(k)][DEFAULT_METHOD]["dsc"])


def targets(study: dict) -> dict:
    out = {}
    for of in ("span", "depth"):
        for name in study["config"]["structures"]:
            k = k_at_fraction(study, name, of)
            target = TARGETS["large"] if name in LARGE else TARGETS["deep"]
            dsc = None if k is None else default_dsc(study, name, k)
            out.setdefault(of, {})[name] = {"k": k, "dsc": dsc, "target": target,
                                            "met": dsc is not None and dsc >= target}
    return out


def tables(study: dict) -> str:
    config, scan = study["config"], study["scan"]
    seeds = [run["seed"] for run in study["retrained"]]
    lines = [f"Colin27 T1, {scan['display_shape'][0]} axial slices of {scan['display_shape'][1]} x "
             f"{scan['display_shape'][2]} pixels, {scan['spacing_mm'][0]:g} mm voxels. Drawn slices: k = 1 the "
             "largest area; k >= 2 both ends of the structure and k-2 evenly spaced between. 3-D DSC over the whole "
             f"volume. Models: demo ({study['base']['model']}) zero-shot, and after one retraining round "
             f"({config['epochs']} epochs) on the other z-half (split at slice {study['split_slice']}; each half "
             f"predicted by the model trained on the other), seeds {seeds or 'none'}, mean ± standard deviation. "
             f"{config['num_samples']} Monte-Carlo samples.", "",
             "| structure | slices (extent) | voxels | below / from the split | model alone, no slice drawn: base | "
             "retrained |", "|---|---|---|---|---|---|"]
    for name in config["structures"]:
        s = study["structures"][name]
        retrained = np.array([run["model_only_dsc"][name] for run in study["retrained"]])
        lines.append(f"| {name} | {s['span']} ({s['lo']}-{s['hi']}) | {s['voxels']:,} | "
                     f"{s['voxels_below_split']:,} / {s['voxels_from_split']:,} | "
                     f"{study['base']['model_only_dsc'][name]:.3f} | "
                     + (f"{retrained.mean():.3f} ± {retrained.std():.3f} |" if retrained.size else "- |"))
    header = ("| structure | k | drawn slices | % of its slices | % of the volume | "
              + " | ".join(METHOD_LABELS[m] for m in METHODS) + " |")
    rule = "|---" * (5 + len(METHODS)) + "|"
    for title, source in (("Base model (demo, zero-shot)", "base"),
                          ("After one retraining round on the other z-half", "retrained")):
        if source == "retrained" and not study["retrained"]:
            continue
        lines += ["", f"{title}: 3-D DSC" + (", mean ± sd over seeds" if source == "retrained" else "") + ":", "",
                  header, rule]
        for name in config["structures"]:
            for k in config["ks"]:
                drawn, of_span, of_depth = fractions(study, name, k)
                cells = []
                for method in METHODS:
                    if source == "base":
                        cells.append(f"{study['base']['results'][name][str(k)][method]['dsc']:.3f}")
                    else:
                        values = retrained_dsc(study, name, k, method)
                        cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
                lines.append(f"| {name} | {k} | {study['structures'][name]['drawn'][str(k)]} | {of_span:.0%} | "
                             f"{of_depth:.1%} | " + " | ".join(cells) + " |")
    source = "retrained" if study["retrained"] else "base"
    first = study["retrained"][0]["results"] if study["retrained"] else study["base"]["results"]
    lines += ["", f"How the default method filled the volume ({source} model"
              + (f", seed {study['retrained'][0]['seed']}" if study["retrained"] else "")
              + "): slices drawn / propagated / interpolated, and the propagation stops by reason "
              "(the no-stop variant for comparison):", "",
              "| structure | k | default: drawn / propagated / interpolated | default stops | no stop: propagated / "
              "interpolated | no-stop stops |", "|---|---|---|---|---|---|"]
    for name in config["structures"]:
        for k in config["ks"]:
            entry = first[name][str(k)]
            a, b = entry["propagation"], entry["propagation_no_stop"]
            lines.append(f"| {name} | {k} | {a['slices'].get(DRAWN, 0)} / {a['slices'].get(PROPAGATED, 0)} / "
                         f"{a['slices'].get(INTERPOLATED, 0)} | "
                         + ", ".join(f"{c} {n}" for c, n in a.get("stops", {}).items())
                         + f" | {b['slices'].get(PROPAGATED, 0)} / {b['slices'].get(INTERPOLATED, 0)} | "
                         + ", ".join(f"{c} {n}" for c, n in b.get("stops", {}).items()) + " |")
    goal = targets(study)
    lines += ["", f"Targets (default method, {source} model): 3-D DSC >= {TARGETS['large']:.2f} on the brain and >= "
              f"{TARGETS['deep']:.2f} on the deep structures with at most {TARGET_FRACTION:.0%} of the slices "
              "drawn, counted against the structure's own slices and against the volume's slices (the largest k "
              "of the grid within the limit):", "",
              "| structure | target | k (<= 10 % of its slices) | DSC | met | k (<= 10 % of the volume) | DSC | met |",
              "|---|---|---|---|---|---|---|---|"]
    for name in config["structures"]:
        cells = []
        for of in ("span", "depth"):
            row = goal[of][name]
            cells += ["-" if row["k"] is None else str(row["k"]),
                      "-" if row["dsc"] is None else f"{row['dsc']:.3f}", "yes" if row["met"] else "no"]
        lines.append(f"| {name} | {goal['span'][name]['target']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(study: dict, path: Path) -> None:
    """DSC against k, one panel per structure and model, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = study["config"]
    names, ks = list(config["structures"]), list(config["ks"])
    rows = [("base", "demo, zero-shot")] + ([("retrained", "after one retraining round")] if study["retrained"]
                                             else [])
    figure, axes = plt.subplots(len(rows), len(names), figsize=(3.1 * len(names), 3.0 * len(rows)), squeeze=False,
                                sharey=True)
    colors = dict(zip(METHODS, ("tab:blue", "tab:green", "tab:orange", "tab:red")))
    for r, (source, label) in enumerate(rows):
        for c, name in enumerate(names):
            ax = axes[r][c]
            for method in METHODS:
                style = dict(marker="o", markersize=3, color=colors[method], label=METHOD_LABELS[method],
                             linewidth=2.4 if method == DEFAULT_METHOD else 1.3)
                if method == "interpolation":  # often equal to the default: drawn dashed, on top
                    style.update(linestyle="--", zorder=4)
                if source == "base":
                    ax.plot(ks, [study["base"]["results"][name][str(k)][method]["dsc"] for k in ks], **style)
                else:
                    values = np.array([retrained_dsc(study, name, k, method) for k in ks])
                    mean, std = values.mean(axis=1), values.std(axis=1)
                    ax.plot(ks, mean, **style)
                    ax.fill_between(ks, mean - std, mean + std, color=colors[method], alpha=0.15)
            target = TARGETS["large"] if name in LARGE else TARGETS["deep"]
            ax.axhline(target, color="grey", linestyle=":", linewidth=1)
            span = study["structures"][name]["span"]
            ax.axvline(TARGET_FRACTION * span, color="grey", linestyle="--", linewidth=0.8)
            ax.set_xlim(0.5, max(ks) + 0.5)
            ax.set_ylim(0, 1.02)
            ax.set_xticks(ks)
            ax.grid(alpha=0.3)
            ax.set_title(f"{name} ({span} slices): {label}", fontsize=8)
            if r == len(rows) - 1:
                ax.set_xlabel("slices drawn (k)")
            if c == 0:
                ax.set_ylabel("3-D DSC")
    axes[0][0].legend(fontsize=6, loc="lower right")
    figure.suptitle("Colin27 T1 (2 mm): 3-D DSC against slices drawn. Dotted: the target; dashed: 10 % of the "
                    "structure's slices", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(study: dict, out: Path, image: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    image.parent.mkdir(parents=True, exist_ok=True)
    (out / "volume_effort.json").write_text(json.dumps(study, indent=1), encoding="utf-8")
    (out / "volume_effort.md").write_text(tables(study), encoding="utf-8")
    plot(study, image)


def summary_line(study: dict) -> str:
    goal = targets(study)
    names = study["config"]["structures"]
    deep = [n for n in names if n not in LARGE]
    parts = []
    for of in ("span", "depth"):
        rows = goal[of]
        if "brain" in rows and rows["brain"]["dsc"] is not None:
            parts.append(f"brain_dsc@10%{of}={rows['brain']['dsc']:.3f}(k={rows['brain']['k']})")
        values = [rows[n]["dsc"] for n in deep if rows[n]["dsc"] is not None]
        if values:
            parts.append(f"deep_dsc@10%{of}=mean {np.mean(values):.3f}/min {np.min(values):.3f}")
    met = all(row["met"] for row in goal["span"].values())
    met_depth = all(row["met"] for row in goal["depth"].values())
    model = "retrained" if study["retrained"] else "base"
    return (" ".join(parts) + f" targets_met(span)={'yes' if met else 'no'} targets_met(depth)="
            f"{'yes' if met_depth else 'no'} model={model} seeds={len(study['retrained'])} "
            f"minutes={study['seconds'] / 60:.1f}")


QUICK = dict(structures=("brain", "caudate"), ks=(1, 3), seeds=(0,), epochs=1, num_samples=2)


def main(argv=None) -> None:
    defaults = EffortStudyConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for volume_effort.json and .md (default docs/study; "
                                                    "with --quick a temporary folder)")
    parser.add_argument("--image", default=None, help="the plot (default docs/images/study-volume-effort.png; "
                                                      "with --quick inside --out)")
    parser.add_argument("--structures", default=",".join(defaults.structures), help="comma-separated structures")
    parser.add_argument("--ks", default=",".join(map(str, defaults.ks)), help="comma-separated drawn-slice counts")
    parser.add_argument("--seeds", default=",".join(map(str, defaults.seeds)), help="retraining seeds")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs of the retraining round")
    parser.add_argument("--samples", type=int, default=defaults.num_samples, help="Monte-Carlo samples")
    parser.add_argument("--margin", type=int, default=defaults.margin,
                        help="empty slices beyond a structure's ends among its training slices")
    parser.add_argument("--no-retrain", action="store_true", help="the base model only")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="torch CPU threads (0: torch's default, one per core)")
    parser.add_argument("--quick", action="store_true", help="brain and caudate, k = 1 and 3, one 1-epoch round")
    parser.add_argument("--report", default=None, metavar="JSON",
                        help="only write the tables and plot again from a volume_effort.json")
    args = parser.parse_args(argv)
    if args.report:
        study = json.loads(Path(args.report).read_text(encoding="utf-8"))
        out = Path(args.out) if args.out else Path(args.report).parent
        image = Path(args.image) if args.image else Path("docs/images/study-volume-effort.png")
        write_report(study, out, image)
        print(tables(study))
        print(summary_line(study))
        return
    config = EffortStudyConfig(
        structures=tuple(args.structures.split(",")), ks=tuple(int(k) for k in args.ks.split(",")),
        seeds=tuple(int(s) for s in args.seeds.split(",")), epochs=args.epochs, num_samples=args.samples,
        margin=args.margin, retrain=not args.no_retrain, device=args.device, threads=args.threads)
    if args.quick:
        config = replace(config, **QUICK)
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="volume-effort-quick-")) if args.quick
                                           else Path("docs/study"))
    image = Path(args.image) if args.image else (out / "study-volume-effort.png" if args.quick
                                                 else Path("docs/images/study-volume-effort.png"))
    study = run_study(config, log=lambda line: print(line, flush=True),
                      on_seed=lambda partial: write_report(partial, out, image))
    write_report(study, out, image)
    print(tables(study))
    print(f"wrote {out / 'volume_effort.json'}, {out / 'volume_effort.md'}, {image}")
    print(summary_line(study))


if __name__ == "__main__":
    main()
