"""Queue orders compared on real volumes: the annotation loop on axial slabs of two brain MRIs, over seeds.

    python benchmarks/volume_study.py                    # 3 seeds, 4 orders (docs/study.md, "Volumes")
    python benchmarks/volume_study.py --quick            # 1 seed, 2 orders, tiny: a smoke check

The volume counterpart of ``benchmarks/acquisition_study.py``. The cases are 3-D scans, stored,
served, reviewed and retrained on by the product's own volume code:

* **Scans**: the Colin27 T1, brain-extracted (``ch2bet.nii.gz`` of Debian's ``mricron-data``), with
  the AAL structures of ``medclipseg.datasets.realdata`` (brain, caudate, putamen, thalamus,
  hippocampus), and the ICBM152 2009a template with its grey- and white-matter maps
  (``medclipseg.datasets.icbm``, nilearn's package data). Each is reoriented to RAS and reduced to
  2 mm voxels by averaging 2 x 2 x 2 blocks (labels: the majority of the block), the affine scaled
  and shifted to the blocks' centres, so the voxels stay where they were in the patient.
* **Slabs**: ``depth`` consecutive axial slices (2 mm apart; 10 by default) as one ``ScanVolume``
  (modality MR, the affine shifted to the slab's first slice). Along z the brain is cut into
  blocks of ``depth/2`` slices dealt pool, pool, pool, held-out, held-out, ... (as realdata splits
  slices by blocks), so held-out slabs never share a slice with a pool slab; pool slabs start every
  ``depth/2`` slices inside a run of pool blocks (two pool slabs may overlap each other).
* **Cases**: a slab with one prompt: "<Structure> in the brain MRI image." when the structure has
  at least ``min_voxels`` voxels in the slab (the truth is its mask there), "No <structure> ..."
  with an empty truth when it has none but lies within ``margin`` mm of the slab, nothing otherwise.
  The held-out set is one case per group (each structure where present, and one absent case),
  the same for every seed and order.

For each seed: ``max_pool`` cases are drawn (by the seed) from the pool slabs' cases and added to
a new annotation database with the demo model's predictions (``predict_volume``, then
``AnnotationStore.add_volume_case_with_prediction``: what ``AnnotationService.segment_volume``
does; a case's prediction is made once and reused by every seed; the database's random keys and
the retraining seed come from the seed). For each order, on a copy of that database:

1. the queue (``AnnotationService.next_case(annotator, acquisition=order)``) serves ``round_size``
   volume cases;
2. a simulated annotator reviews ``review_slices`` slices of each: the slice the case opens on
   (``case.start_slice``, the most uncertain) and the next most uncertain by the prediction's
   per-slice band entropy (``store.slice_scores``); it saves the true mask on those slices and the
   model's mask elsewhere, with ``reviewed_slices`` (``AnnotationService.save``);
3. the product's retraining (``medclipseg.annotation.retraining.run_retrain``: reviewed slices of
   volumes become 2-D examples) fine-tunes the current version for ``epochs`` epochs on everything
   labelled so far and promotes it; ``AnnotationService.rescore_pending`` re-predicts the rest of
   the queue (skipped after the last round, when nothing more is served);
4. the promoted version predicts the held-out slabs (``predict_volume``, seed 0) and each is
   scored by 3-D DSC (``medclipseg.metrics.dice_3d``: 2|A n B| / (|A| + |B|), 1 when both are empty).

The ceiling (``reference_epochs`` > 0) is the demo model fine-tuned once (training seed: the first
seed) on every slice of every pool slab's case. Writes <out>/volumes.json and <out>/volumes.md (the
tables) and the plot (``--image``: mean held-out DSC against volumes labelled, a band of one
standard deviation over seeds, and against pixels corrected); the last line printed is a summary.
Torch runs on one CPU thread by default (``--threads``): on a shared machine, OpenMP threads that
wait for a busy core slowed the same predictions down by up to ten times.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

try:  # run as a script (benchmarks/ on the path) or imported from the repository root
    from acquisition_study import copy_database, curves
except ImportError:  # pragma: no cover
    from benchmarks.acquisition_study import copy_database, curves
from medclipseg.annotation.queue import ACQUISITIONS, DEFAULT_ACQUISITION

ORDERS = ("random", "band_entropy", "band_entropy_diverse", "random_diverse")
SIMULATED_ANNOTATOR = "simulated-annotator"
FACTOR = 2              # voxels averaged along each axis: 1 mm -> 2 mm
PATTERN = ("pool", "pool", "pool", "held-out", "held-out")
ABSENT = "absent"
SCAN_LABELS = {"colin27": "Colin27", "icbm152": "ICBM152"}


@dataclass
class VolumeStudyConfig:
    orders: Sequence[str] = ORDERS
    seeds: Sequence[int] = (0, 1, 2)
    rounds: int = 4
    round_size: int = 4          # volume cases served per round
    review_slices: int = 3       # slices the annotator reviews per volume
    epochs: int = 6              # per round, from the previous round's model
    reference_epochs: int = 8    # the all-pool ceiling, from the demo model (0: none)
    num_samples: int = 4         # Monte-Carlo samples of every volume prediction
    depth: int = 10              # slices per slab
    min_voxels: int = 20         # a structure counts as present in a slab from this many (2 mm) voxels
    margin_mm: float = 12.0      # "No ..." prompts for slabs this close to the structure
    max_pool: Optional[int] = 24    # pool cases drawn per seed from the pool slabs' cases (None: all)
    max_test: Optional[int] = None  # None: one held-out case per group
    scans: Sequence[str] = ("colin27", "icbm152")
    device: str = "cpu"
    threads: int = 1             # torch CPU threads (1: no OpenMP spin-waiting on a shared machine)


@dataclass
class Scan:
    """A scan on its 2 mm RAS grid: intensities, affine and one boolean mask per structure."""

    name: str
    array: np.ndarray
    affine: np.ndarray
    masks: dict
    prompts: dict     # structure -> (present prompt, absent prompt)
    head: np.ndarray  # where the slabs may lie: the brain


@dataclass
class VolumeCase:
    name: str
    scan: str
    slab: str         # scan and first slice: cases of one slab share their voxels
    z_mm: tuple       # the slab's extent along z, world mm (first and last slice centre)
    structure: str
    present: bool
    prompt: str
    split: str
    volume: object = field(repr=False)   # medclipseg.io.volumes.ScanVolume
    truth: np.ndarray = field(repr=False)  # bool, on the volume's own grid

    @property
    def group(self) -> str:
        return self.structure if self.present else ABSENT

    def describe(self) -> dict:
        return {"name": self.name, "scan": self.scan, "slab": self.slab, "z_mm": list(self.z_mm),
                "structure": self.structure, "present": self.present, "prompt": self.prompt, "split": self.split,
                "voxels": int(self.truth.sum()), "shape": list(self.volume.shape)}


# ------------------------------------------------------------------------------------ data


def downsample(values: np.ndarray, affine: np.ndarray, *, labels: bool = False) -> tuple:
    """(values on the grid of FACTOR^3 blocks, its affine): block means, or for labels the majority."""
    f = FACTOR
    shape = [n // f for n in values.shape]
    cropped = np.asarray(values)[:shape[0] * f, :shape[1] * f, :shape[2] * f].astype(np.float32)
    blocks = cropped.reshape(shape[0], f, shape[1], f, shape[2], f).mean(axis=(1, 3, 5))
    scale = np.diag([f, f, f, 1.0])
    scale[:3, 3] = (f - 1) / 2.0  # a new voxel's centre is the centre of its block
    return (blocks >= 0.5 if labels else blocks.astype(np.float32)), np.asarray(affine, np.float64) @ scale


def load_colin27() -> Scan:
    import nibabel

    from medclipseg.datasets.realdata import BRAIN_FILE, DEFAULT_TEMPLATES_DIR, STRUCTURES, load_volumes, \
        structure_mask

    volumes = load_volumes(DEFAULT_TEMPLATES_DIR)
    image = nibabel.as_closest_canonical(nibabel.load(str(DEFAULT_TEMPLATES_DIR / BRAIN_FILE)))
    if not np.allclose(image.affine, volumes.affine, atol=1e-4):
        raise ValueError(f"{BRAIN_FILE} is not on the atlas grid.")
    array, affine = downsample(np.asanyarray(image.dataobj), image.affine)
    masks = {name: downsample(structure_mask(volumes, structure), volumes.affine, labels=True)[0]
             for name, structure in STRUCTURES.items()}
    prompts = {name: (structure.prompt(True), structure.prompt(False)) for name, structure in STRUCTURES.items()}
    return Scan("colin27", array, affine, masks, prompts, masks["brain"])


def load_icbm152() -> Scan:
    import nibabel

    from medclipseg.datasets.icbm import INSTALL_HINT, T1_FILE, TISSUE_FILES, prompt, templates_dir

    folder = templates_dir()
    if folder is None:
        raise FileNotFoundError(f"The ICBM152 2009a files were not found; {INSTALL_HINT}")
    t1 = nibabel.as_closest_canonical(nibabel.load(str(folder / T1_FILE)))
    array, affine = downsample(np.asarray(t1.dataobj, dtype=np.float32), t1.affine)
    masks = {}
    for name, file in TISSUE_FILES.items():
        image = nibabel.as_closest_canonical(nibabel.load(str(folder / file)))
        if not np.allclose(image.affine, t1.affine, atol=1e-4):
            raise ValueError(f"{file} is not on the grid of {T1_FILE}.")
        masks[name] = downsample(np.asarray(image.dataobj, dtype=np.float32) > 0.5, t1.affine, labels=True)[0]
    prompts = {name: (prompt(name, True), prompt(name, False)) for name in TISSUE_FILES}
    return Scan("icbm152", array, affine, masks, prompts, masks["grey_matter"] | masks["white_matter"])


LOADERS = {"colin27": load_colin27, "icbm152": load_icbm152}


def slab_starts(scan: Scan, depth: int) -> dict:
    """{"pool": [first slices], "held-out": [...]}: blocks of depth/2 slices from the first slice with
    brain, dealt by PATTERN; a slab is `depth` slices inside one run of blocks of one split."""
    block = max(1, depth // 2)
    occupied = np.flatnonzero(scan.head.any(axis=(0, 1)))
    first, last = int(occupied[0]), int(occupied[-1])
    starts: dict = {"pool": [], "held-out": []}
    runs: list = []  # (split, first slice, end) of maximal runs of blocks of one split
    for index, start in enumerate(range(first, last + 1, block)):
        split = PATTERN[index % len(PATTERN)]
        end = min(start + block, scan.array.shape[2])
        if runs and runs[-1][0] == split:
            runs[-1] = (split, runs[-1][1], end)
        else:
            runs.append((split, start, end))
    for split, start, end in runs:
        for z in range(start, end - depth + 1, block):
            if scan.head[:, :, z:z + depth].any(axis=(0, 1)).sum() >= depth // 2:  # at least half in the brain
                starts[split].append(z)
    return starts


def make_cases(scan: Scan, config: VolumeStudyConfig) -> list:
    from medclipseg.io.volumes import ScanVolume

    depth, cases = config.depth, []
    voxel_mm = float(np.linalg.norm(scan.affine[:3, 2]))
    margin = int(round(config.margin_mm / voxel_mm))
    extents = {}
    for name, mask in scan.masks.items():
        occupied = np.flatnonzero(mask.any(axis=(0, 1)))
        extents[name] = (int(occupied[0]), int(occupied[-1]))
    for split, starts in slab_starts(scan, depth).items():
        for z in starts:
            shift = np.eye(4)
            shift[2, 3] = z
            affine = scan.affine @ shift
            volume = ScanVolume(array=np.ascontiguousarray(scan.array[:, :, z:z + depth]), affine=affine,
                                modality="MR", name=f"{scan.name}_z{z:03d}.nii.gz")
            z_mm = tuple(round(float((affine @ [0, 0, k, 1])[2]), 1) for k in (0, depth - 1))
            for structure, mask in scan.masks.items():
                truth = np.ascontiguousarray(mask[:, :, z:z + depth])
                voxels = int(truth.sum())
                low, high = extents[structure]
                near = low - margin <= z + depth - 1 and z <= high + margin
                if voxels >= config.min_voxels:
                    present = True
                elif voxels == 0 and near:
                    present = False
                else:
                    continue
                cases.append(VolumeCase(
                    name=f"{scan.name}-{structure}_z{z:03d}", scan=scan.name, slab=f"{scan.name}_z{z:03d}",
                    z_mm=z_mm, structure=structure, present=present,
                    prompt=scan.prompts[structure][0 if present else 1],
                    split=split, volume=volume, truth=truth))
    return cases


def held_out_subset(cases: Sequence[VolumeCase], limit: Optional[int]) -> list:
    """One case per group (structure where present, "absent"), the groups in turn, until `limit`:
    a fixed set, the middle case of each group's slabs first."""
    groups: dict = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    queues = {}
    for group, members in sorted(groups.items()):
        middle = (len(members) - 1) / 2
        queues[group] = [members[i] for i in sorted(range(len(members)), key=lambda i: (abs(i - middle), i))]
    limit = len(queues) if limit is None else int(limit)
    chosen: list = []
    while len(chosen) < min(limit, len(cases)):
        for group in list(queues):
            if queues[group] and len(chosen) < limit:
                chosen.append(queues[group].pop(0))
    return chosen


def prepare_cases(config: VolumeStudyConfig) -> tuple:
    """(pool candidates, held-out cases) of the configured scans."""
    every = [case for name in config.scans for case in make_cases(LOADERS[name](), config)]
    test = held_out_subset([case for case in every if case.split == "held-out"], config.max_test)
    return [case for case in every if case.split == "pool"], test


def draw_pool(candidates: Sequence[VolumeCase], limit: Optional[int], seed: int) -> list:
    """`limit` pool cases drawn by `seed` (in the drawn order, which is the order they are added in)."""
    order = np.random.default_rng(seed).permutation(len(candidates))
    return [candidates[i] for i in order[:limit]]


# ------------------------------------------------------------------------------------ scoring


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    try:
        from medclipseg.metrics import dice_3d
    except ImportError:  # older trees: the same rule
        total = int(pred.sum()) + int(truth.sum())
        return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total
    return float(dice_3d(pred, truth))


def evaluate(predictor, test: Sequence[VolumeCase], config: VolumeStudyConfig) -> dict:
    """Held-out 3-D DSC: mean over cases, per group, per case."""
    from medclipseg.inference.volume import predict_volume

    per_case = {}
    for case in test:
        prediction = predict_volume(predictor, case.volume, case.prompt, num_samples=config.num_samples, seed=0,
                                    batch_slices=config.depth)
        per_case[case.name] = dice(np.asarray(prediction.mask, bool), case.truth)
    by_group: dict = {}
    for case in test:
        by_group.setdefault(case.group, []).append(per_case[case.name])
    return {"dsc": float(np.mean(list(per_case.values()))),
            "dsc_by_group": {g: float(np.mean(v)) for g, v in sorted(by_group.items())}, "dsc_by_case": per_case}


def slice_examples(case: VolumeCase) -> list:
    """Every slice of a case as a 2-D training example, windowed as the store windows a volume."""
    from medclipseg.inference.volume import volume_window
    from medclipseg.io.volumes import window_to_uint8
    from medclipseg.training.retrain import TrainingExample

    window = volume_window(case.volume)
    scan, truth = case.volume.to_display(), case.volume.to_display(case.truth)
    return [TrainingExample(image_bgr=np.repeat(window_to_uint8(scan[s], window)[..., None], 3, axis=2),
                            mask=np.asarray(truth[s], bool), prompt=case.prompt, name=f"{case.name}_s{s:02d}")
            for s in range(scan.shape[0])]


def reference_all_pool(pool: Sequence[VolumeCase], test: Sequence[VolumeCase], work: Path,
                       config: VolumeStudyConfig, seed: int) -> dict:
    """The demo model fine-tuned once on every slice of every pool case (the ceiling)."""
    from medclipseg.inference.predictor import Predictor
    from medclipseg.training.config import RetrainRecipe
    from medclipseg.training.retrain import fine_tune

    recipe = replace(RetrainRecipe(), epochs=config.reference_epochs, seed=seed)
    examples = [example for case in pool for example in slice_examples(case)]
    folder = fine_tune("demo", examples, recipe, work / "reference-model", device=config.device)
    result = evaluate(Predictor.from_pretrained(str(folder), device=config.device), test, config)
    result["slices"] = len(examples)
    return result


def spread(served: Sequence[VolumeCase]) -> dict:
    """How spread out a round's volumes are: distinct scans, slabs, prompts; absent prompts."""
    return {"cases": len(served), "distinct_scans": len({c.scan for c in served}),
            "distinct_slabs": len({c.slab for c in served}), "distinct_prompts": len({c.prompt for c in served}),
            "absent_prompts": sum(1 for c in served if not c.present)}


# ------------------------------------------------------------------------------------ the loop


def review_slices(start: Optional[int], band_entropy: np.ndarray, count: int) -> list:
    """The slices the annotator reviews: the one the case opens on, then the most uncertain others
    (ties: the nearer to the start slice first)."""
    start = int(start or 0)
    others = sorted((s for s in range(len(band_entropy)) if s != start),
                    key=lambda s: (-float(band_entropy[s]), abs(s - start), s))
    return sorted([start] + others[:max(0, count - 1)])


def review(service, view, case: VolumeCase, config: VolumeStudyConfig) -> dict:
    """Save the true mask on the reviewed slices, the model's elsewhere; what it took."""
    from medclipseg.annotation import volume_files

    store = service.store
    prediction_id = view.prediction_id
    geometry = store.volume_geometry(view.case.id)
    scores = store.slice_scores(prediction_id)["band_entropy"]
    slices = review_slices(view.case.start_slice, scores, config.review_slices)
    predicted = volume_files.unmosaic(store.load_mask(store.prediction_row(prediction_id)["mask_path"]) > 0, geometry)
    truth = case.volume.to_display(case.truth)
    mask = np.array(predicted, dtype=bool, copy=True)
    mask[slices] = truth[slices]
    correction = service.save(view.case.id, mask, annotator=SIMULATED_ANNOTATOR, prediction_id=prediction_id,
                              reviewed_slices=slices)
    return {"case": case.name, "slices": slices, "start_slice": int(view.case.start_slice or 0),
            "slices_with_structure": int(sum(bool(truth[s].any()) for s in slices)),
            "pixels_changed": int(correction.pixels_changed)}


def predict_pool(predictor, pool: Sequence[VolumeCase], predictions: dict, config: VolumeStudyConfig) -> dict:
    """The demo model's prediction of each pool case (what segment_volume predicts), made once for
    all seeds: ``predictions`` (case name -> prediction) is filled in."""
    from medclipseg.inference.volume import predict_volume

    for case in pool:
        if case.name not in predictions:
            predictions[case.name] = predict_volume(predictor, case.volume, case.prompt,
                                                    num_samples=config.num_samples, seed=0)
    return predictions


def ingest_pool(db_path: Path, predictor, pool: Sequence[VolumeCase], predictions: dict,
                config: VolumeStudyConfig, seed: int) -> None:
    """One database holding every pool case as a volume case with the demo model's prediction."""
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore

    random.seed(seed)  # the cases' random keys (random orders) come from Python's generator
    store = AnnotationStore(db_path)
    store.set_gold_fraction(0.0)  # the held-out slabs play the gold split's part
    service = AnnotationService(store, predictor=predictor, device=config.device, num_samples=config.num_samples,
                                volume_samples=config.num_samples)  # records the demo model as the base version
    try:
        for case in pool:
            store.add_volume_case_with_prediction(case.volume, predictions[case.name], prompt=case.prompt,
                                                  original_name=case.name, source="ingest")
    finally:
        service.close()
        store.close()


def run_order(order: str, template_db: Path, work: Path, predictor, pool: Sequence[VolumeCase],
              test: Sequence[VolumeCase], config: VolumeStudyConfig, seed: int, zero_shot: dict, log) -> list:
    from medclipseg.annotation.retraining import run_retrain
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore
    from medclipseg.training.config import RetrainRecipe

    db_path = work / order / "annotations.db"
    copy_database(template_db, db_path)
    store = AnnotationStore(db_path)
    service = AnnotationService(store, predictor=predictor, device=config.device, num_samples=config.num_samples,
                                volume_samples=config.num_samples)
    by_name = {case.name: case for case in pool}
    recipe = replace(RetrainRecipe(), epochs=config.epochs, eval_samples=config.num_samples, seed=seed)
    rounds = [dict(zero_shot, labels=0, slices=0, pixels_changed=0, seconds=0.0, served=[], reviews=[])]
    labels = slices = pixels = 0
    try:
        for round_index in range(config.rounds):
            started = time.perf_counter()
            served, reviews = [], []
            for _ in range(config.round_size):
                view = service.next_case(SIMULATED_ANNOTATOR, acquisition=order)
                if view is None:
                    break
                case = by_name[view.case.original_name]
                done = review(service, view, case, config)
                served.append(case.name)
                reviews.append(done)
                labels += 1
                slices += len(done["slices"])
                pixels += done["pixels_changed"]
            reviewed = time.perf_counter()
            outcome = run_retrain(store, by=SIMULATED_ANNOTATOR, recipe=recipe, promote="yes", device=config.device,
                                  log=lambda line: None)
            trained = time.perf_counter()
            rescored = 0
            if round_index < config.rounds - 1:  # the last round's queue is served no more
                rescored = service.rescore_pending()
            ranked = time.perf_counter()
            scores = evaluate(service.predictor, test, config)
            if service.model_id != outcome.version_id:
                raise RuntimeError(f"held-out scored with {service.model_id}, not the promoted {outcome.version_id}")
            finished = time.perf_counter()
            rounds.append(dict(scores, labels=labels, slices=slices, pixels_changed=pixels,
                               seconds=finished - started, served=served, reviews=reviews,
                               version=outcome.version_id, train_slices=outcome.train_cases, rescored=rescored,
                               timing={"review": reviewed - started, "retrain": trained - reviewed,
                                       "rescore": ranked - trained, "evaluate": finished - ranked}))
            log(f"  seed {seed} {order:22} round {round_index + 1}: {labels:3d} volumes {slices:3d} slices "
                f"{pixels:7d} px  DSC {scores['dsc']:.3f}  ({finished - started:.0f} s: retrain "
                f"{trained - reviewed:.0f}, re-score {rescored} in {ranked - trained:.0f}, held-out "
                f"{finished - ranked:.0f})")
    finally:
        service.close()
        store.close()
    return rounds


def run_study(config: VolumeStudyConfig, *, work: Optional[Path] = None, log=print, on_seed=None) -> dict:
    import torch

    from medclipseg.inference.predictor import Predictor

    if config.threads:
        torch.set_num_threads(int(config.threads))
    unknown = [order for order in config.orders if order not in ACQUISITIONS]
    if unknown:
        raise ValueError(f"Unknown orders {unknown}; use some of {', '.join(ACQUISITIONS)}.")
    started = time.perf_counter()
    owned = work is None
    work = Path(tempfile.mkdtemp(prefix="medclipseg-volume-study-")) if owned else Path(work)
    try:
        candidates, test = prepare_cases(config)
        log(f"pool candidates {len(candidates)} volume cases ({len({c.slab for c in candidates})} slabs), "
            f"{config.max_pool or 'all'} drawn per seed; held-out {len(test)} ({', '.join(c.name for c in test)}); "
            f"{config.depth} slices of 2 mm each")
        predictor = Predictor.from_pretrained("demo", device=config.device)
        zero_shot = evaluate(predictor, test, config)
        log(f"zero-shot held-out DSC {zero_shot['dsc']:.3f}")
        reference = None
        if config.reference_epochs > 0:
            moment = time.perf_counter()
            reference = reference_all_pool(candidates, test, work, config, config.seeds[0])
            reference["seconds"] = time.perf_counter() - moment
            log(f"all-pool reference ({reference['slices']} slices, {config.reference_epochs} epochs): "
                f"DSC {reference['dsc']:.3f} ({reference['seconds']:.0f} s)")
        study = {"config": asdict(config), "default": DEFAULT_ACQUISITION,
                 "cases": {"pool_candidates": [c.describe() for c in candidates],
                           "held_out": [c.describe() for c in test]},
                 "zero_shot": zero_shot, "reference": reference, "seeds": []}
        by_name = {case.name: case for case in candidates}
        predictions: dict = {}
        for seed in config.seeds:
            seed_started = time.perf_counter()
            pool = draw_pool(candidates, config.max_pool, seed)
            predict_pool(predictor, pool, predictions, config)
            template = work / f"seed{seed}" / "template" / "annotations.db"
            template.parent.mkdir(parents=True, exist_ok=True)
            ingest_pool(template, predictor, pool, predictions, config, seed)
            log(f"seed {seed}: pool of {len(pool)} ({sum(not c.present for c in pool)} \"No ...\" prompts, "
                f"{len({c.slab for c in pool})} slabs) predicted and added in "
                f"{time.perf_counter() - seed_started:.0f} s")
            orders, spreads = {}, {}
            for order in config.orders:
                rounds = run_order(order, template, work / f"seed{seed}", predictor, pool, test, config, seed,
                                   zero_shot, log)
                orders[order] = rounds
                spreads[order] = spread([by_name[name] for name in rounds[1]["served"]]) if len(rounds) > 1 else None
            study["seeds"].append({"seed": seed, "pool": [c.name for c in pool], "strategies": orders,
                                   "first_round_spread": spreads, "seconds": time.perf_counter() - seed_started})
            study["seconds"] = time.perf_counter() - started
            if on_seed is not None:
                on_seed(study)  # a long run leaves its results so far
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)
    study["seconds"] = time.perf_counter() - started
    return study


# ------------------------------------------------------------------------------------ report


def as_dataset(study: dict) -> dict:
    """The study in the shape acquisition_study's curves and plot read (one data set)."""
    return {"dataset": " + ".join(SCAN_LABELS.get(name, name) for name in study["config"]["scans"]) + " slabs",
            "pool": len(study["seeds"][0]["pool"]) if study["seeds"] else 0, "test": len(study["cases"]["held_out"]),
            "seeds": study["seeds"]}


def tables(study: dict) -> str:
    data = as_dataset(study)
    orders = list(study["seeds"][0]["strategies"])
    seeds = [run["seed"] for run in study["seeds"]]
    config = study["config"]
    labels, _ = curves(data, orders[0])
    reference = study.get("reference")
    lines = [f"Pool {data['pool']} volume cases (drawn per seed from {len(study['cases']['pool_candidates'])}), "
             f"held-out {data['test']}, seeds {seeds}; rounds of "
             f"{config['round_size']} volumes, {config['review_slices']} slices reviewed per volume, "
             f"{config['epochs']} epochs per round, {config['num_samples']} Monte-Carlo samples.", "",
             f"Zero-shot (demo-tiny) held-out 3-D DSC {study['zero_shot']['dsc']:.3f}"
             + (f"; all-pool fine-tune (every slice of every pool candidate, {reference['slices']} slices, "
                f"{config['reference_epochs']} epochs) {reference['dsc']:.3f}." if reference else "."), "",
             "Held-out 3-D DSC after each round, mean ± standard deviation over seeds; then the mean over "
             "rounds and the seeds where the order beat random at the last round:", "",
             "| order | " + " | ".join(f"{n} volumes ({n * config['review_slices']} slices)" for n in labels[1:])
             + " | mean over rounds | beats random (last round) |", "|---" * (len(labels) + 2) + "|"]
    _, random_dsc = curves(data, "random") if "random" in orders else (None, None)
    for order in orders:
        _, dsc = curves(data, order)
        cells = [f"{dsc[:, i].mean():.3f} ± {dsc[:, i].std():.3f}" for i in range(1, dsc.shape[1])]
        wins = "-" if random_dsc is None or order == "random" else \
            f"{int((dsc[:, -1] > random_dsc[:, -1]).sum())}/{dsc.shape[0]}"
        lines.append(f"| {order} | " + " | ".join(cells) + f" | {dsc[:, 1:].mean():.3f} | {wins} |")
    present = [case["name"] for case in study["cases"]["held_out"] if case["present"]]
    if present and len(present) < data["test"]:
        lines += ["", f"The same rounds without the absent (\"No ...\") held-out case: mean 3-D DSC of the "
                  f"{len(present)} held-out cases that show their structure, mean ± standard deviation over "
                  "seeds:", "",
                  "| order | zero-shot | " + " | ".join(f"{n} volumes" for n in labels[1:]) + " |",
                  "|---" * (len(labels) + 1) + "|"]
        for order in orders:
            runs = np.array([[np.mean([rnd["dsc_by_case"][name] for name in present])
                              for rnd in run["strategies"][order][:len(labels)]] for run in study["seeds"]])
            lines.append(f"| {order} | {runs[:, 0].mean():.3f} | "
                         + " | ".join(f"{runs[:, i].mean():.3f} ± {runs[:, i].std():.3f}"
                                      for i in range(1, runs.shape[1])) + " |")
    groups = list(study["zero_shot"]["dsc_by_group"])
    lines += ["", "Held-out 3-D DSC per group after the last round, mean over seeds (one held-out case per group):", "",
              "| order | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|",
              "| zero-shot | " + " | ".join(f"{study['zero_shot']['dsc_by_group'][g]:.2f}" for g in groups) + " |"]
    if reference:
        lines.append("| all pool | " + " | ".join(f"{reference['dsc_by_group'][g]:.2f}" for g in groups) + " |")
    for order in orders:
        last = [run["strategies"][order][-1]["dsc_by_group"] for run in study["seeds"]]
        lines.append(f"| {order} | " + " | ".join(f"{np.mean([r[g] for r in last]):.2f}" for g in groups) + " |")
    lines += ["", "The first round's volumes, mean over seeds: distinct scans, slabs and prompts, absent "
              "(\"No ...\") prompts; over all rounds: reviewed slices that show the structure, pixels corrected:", "",
              "| order | distinct scans | distinct slabs | distinct prompts | absent prompts | reviewed slices with "
              "the structure | pixels corrected |", "|---|---|---|---|---|---|---|"]
    for order in orders:
        rows = [run["first_round_spread"][order] for run in study["seeds"] if run["first_round_spread"][order]]
        reviews = [r for run in study["seeds"] for rnd in run["strategies"][order][1:] for r in rnd["reviews"]]
        showing = sum(r["slices_with_structure"] for r in reviews) / max(1, sum(len(r["slices"]) for r in reviews))
        pixels = np.mean([run["strategies"][order][-1]["pixels_changed"] for run in study["seeds"]])
        lines.append(f"| {order} | {np.mean([r['distinct_scans'] for r in rows]):.1f} | "
                     f"{np.mean([r['distinct_slabs'] for r in rows]):.1f} | "
                     f"{np.mean([r['distinct_prompts'] for r in rows]):.1f} | "
                     f"{np.mean([r['absent_prompts'] for r in rows]):.1f} | {showing:.0%} | {pixels:,.0f} |")
    return "\n".join(lines) + "\n"


def plot(study: dict, path: Path) -> None:
    """Held-out DSC against volumes labelled (mean, band of one sd over seeds) and against pixels corrected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = as_dataset(study)
    figure, (by_volumes, by_pixels) = plt.subplots(1, 2, figsize=(12, 4.4))
    for order in study["seeds"][0]["strategies"]:
        labels, dsc = curves(data, order)
        mean, std = dsc.mean(axis=0), dsc.std(axis=0)
        pixels = np.mean([[r["pixels_changed"] for r in run["strategies"][order][:len(labels)]]
                          for run in study["seeds"]], axis=0)
        style = dict(linestyle="--" if order.startswith("random") else "-", marker="o", markersize=3,
                     linewidth=2.6 if order == study["default"] else 1.4, label=order)
        line, = by_volumes.plot(labels, mean, **style)
        by_volumes.fill_between(labels, mean - std, mean + std, color=line.get_color(), alpha=0.12)
        by_pixels.plot(pixels, mean, color=line.get_color(), **style)
    if study.get("reference"):
        for ax in (by_volumes, by_pixels):
            ax.axhline(study["reference"]["dsc"], color="grey", linewidth=1, linestyle=":", label="all pool")
    config = study["config"]
    by_volumes.set_xlabel(f"volume cases labelled ({config['review_slices']} slices reviewed each)")
    by_pixels.set_xlabel("pixels corrected (mean over seeds)")
    by_volumes.set_ylabel("held-out 3-D DSC (mean ± sd over seeds)")
    by_volumes.set_title(f"{data['dataset']}: pool {data['pool']}, held-out {data['test']}, "
                         f"{len(study['seeds'])} seed{'' if len(study['seeds']) == 1 else 's'}")
    by_pixels.set_title("the same rounds against the annotator's effort")
    for ax in (by_volumes, by_pixels):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(study: dict, out: Path, image: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    image.parent.mkdir(parents=True, exist_ok=True)
    (out / "volumes.json").write_text(json.dumps(study, indent=1), encoding="utf-8")
    (out / "volumes.md").write_text(tables(study), encoding="utf-8")
    if study["seeds"]:
        plot(study, image)


def summary_line(study: dict) -> str:
    data = as_dataset(study)
    means = {order: float(curves(data, order)[1][:, 1:].mean()) for order in study["seeds"][0]["strategies"]}
    best = max(means, key=means.get)
    last = {order: float(curves(data, order)[1][:, -1].mean()) for order in means}
    return (f"volumes_best={best}({means[best]:.3f})" + (f" random={means['random']:.3f}" if "random" in means else "")
            + f" last_round={{{', '.join(f'{o}: {v:.3f}' for o, v in last.items())}}} "
            f"zero_shot={study['zero_shot']['dsc']:.3f} seeds={len(study['seeds'])} "
            f"minutes={study['seconds'] / 60:.1f}")


QUICK = dict(orders=("random", "band_entropy_diverse"), seeds=(0,), rounds=2, round_size=2, epochs=1,
             reference_epochs=0, max_pool=8, max_test=3, scans=("colin27",))


def main(argv=None) -> None:
    defaults = VolumeStudyConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for volumes.json and volumes.md (default docs/study; "
                                                    "with --quick a temporary folder)")
    parser.add_argument("--image", default=None, help="the plot (default docs/images/study-volumes.png; with "
                                                      "--quick inside --out)")
    parser.add_argument("--orders", default=",".join(defaults.orders), help="comma-separated queue orders")
    parser.add_argument("--seeds", default=",".join(map(str, defaults.seeds)), help="comma-separated seeds")
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="rounds per order")
    parser.add_argument("--round-size", type=int, default=defaults.round_size, help="volumes labelled per round")
    parser.add_argument("--review-slices", type=int, default=defaults.review_slices, help="slices reviewed per volume")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="retraining epochs per round")
    parser.add_argument("--reference-epochs", type=int, default=defaults.reference_epochs,
                        help="epochs of the all-pool reference (0: none)")
    parser.add_argument("--samples", type=int, default=defaults.num_samples, help="Monte-Carlo samples")
    parser.add_argument("--depth", type=int, default=defaults.depth, help="slices per slab")
    parser.add_argument("--max-pool", type=int, default=defaults.max_pool,
                        help="pool cases drawn per seed (0: every case of the pool slabs)")
    parser.add_argument("--max-test", type=int, default=None, help="held-out cases (default: one per group)")
    parser.add_argument("--scans", default=",".join(defaults.scans), help="colin27, icbm152 (comma-separated)")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="torch CPU threads (0: torch's default, one per core)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 orders, 2 tiny rounds: a smoke check")
    parser.add_argument("--report", default=None, metavar="JSON",
                        help="only write the tables and plot again from a volumes.json")
    args = parser.parse_args(argv)
    if args.report:
        study = json.loads(Path(args.report).read_text(encoding="utf-8"))
        out = Path(args.out) if args.out else Path(args.report).parent
        image = Path(args.image) if args.image else Path("docs/images/study-volumes.png")
        write_report(study, out, image)
        print(tables(study))
        print(summary_line(study))
        return
    config = VolumeStudyConfig(
        orders=tuple(args.orders.split(",")), seeds=tuple(int(s) for s in args.seeds.split(",")), rounds=args.rounds,
        round_size=args.round_size, review_slices=args.review_slices, epochs=args.epochs,
        reference_epochs=args.reference_epochs, num_samples=args.samples, depth=args.depth,
        max_pool=args.max_pool or None, max_test=args.max_test, scans=tuple(args.scans.split(",")), device=args.device,
        threads=args.threads)
    if args.quick:
        config = replace(config, **QUICK)
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="volume-study-quick-")) if args.quick
                                           else Path("docs/study"))
    image = Path(args.image) if args.image else (out / "study-volumes.png" if args.quick
                                                 else Path("docs/images/study-volumes.png"))
    study = run_study(config, log=lambda line: print(line, flush=True),
                      on_seed=lambda partial: write_report(partial, out, image))
    write_report(study, out, image)
    print(tables(study))
    print(f"wrote {out / 'volumes.json'}, {out / 'volumes.md'}, {image}")
    print(summary_line(study))


if __name__ == "__main__":
    main()
