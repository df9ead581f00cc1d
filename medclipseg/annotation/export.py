"""Export corrected annotations from the annotation store as a dataset in the authors' layout.

    <out>/Train_Folder/img/case000001.png    <out>/Train_Folder/label/case000001.png   (and Val_, Test_)
    <out>/Prompts_Folder/Train_text.xlsx + .csv, Val_text.xlsx + .csv, Test_text.xlsx + .csv
    <out>/predicted/case000001.png           the model's mask the annotator started from
    <out>/raters/raterNN/case000001.png      each rater's own mask, for a case with several raters
    <out>/manifest.json                      provenance of every exported case

A case with several raters (medclipseg.annotation.review) exports their consensus as its label
(STAPLE by default, or a majority vote: ``consensus``), each rater's newest mask under ``raters/``
(for a volume: its exported slices, and the whole mask on the scan's grid with ``--format
nifti``/``dicom-seg``) and the agreement in the manifest. A case still waiting for some of its
raters is left out, as training leaves it out. With the review step on, only the versions a
reviewer approved are exported.

The folder loads with ``medclipseg.datasets.layout.load_split`` (the test table ``Test_text`` is the
fallback name for the original prompt design), so ``medclipseg train --data <out>`` fine-tunes on
it directly. Images are the stored pixels (lossless PNG, BGR as stored); labels are grey 0/255 PNG
of the latest corrected (or accepted) version, at the image's original resolution. The predicted
masks sit outside the split folders, so training ignores them.

Cases are split at the level of images: cases that share pixels (the same image with several
prompts) always land in the same split, so no image is seen in training and in testing. Gold cases
(the split held out to score model versions, ``cases.gold``) always go to test, never to train or
val, so that training on an export never learns the cases that score versions; the other images
are split by the fractions, and the manifest marks each case's ``gold``.

The export is written into a temporary sibling folder and renamed into place at the end: a failed
export leaves nothing half-written. Only the store's de-identified fields are exported (from the
case metadata only ``modality`` and ``pixel_spacing``).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from medclipseg.datasets.layout import (
    IMAGE_FOLDER,
    LABEL_FOLDER,
    PROMPTS_FOLDER,
    SPLIT_FOLDERS,
    SPLITS,
    TABLE_SUFFIXES,
    write_prompt_table,
)
from medclipseg.datasets.splits import check_destination, split_sizes
from medclipseg.io.png import PNGError, encode_png

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "PREDICTED_FOLDER",
    "TABLE_STEMS",
    "EXPORTABLE_STATUSES",
    "ExportResult",
    "split_cases",
    "export_dataset",
    "read_manifest",
]

FORMAT_NAME = "medclipseg-export"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PREDICTED_FOLDER = "predicted"
RATERS_FOLDER = "raters"
# The consensus methods an export offers (medclipseg.team.agreement), as the manifest names them.
CONSENSUS_LABELS = {"staple": "consensus (STAPLE)", "majority": "consensus (majority vote)"}
# Table names written per split; "Test_text" is what load_split falls back to for the original design.
TABLE_STEMS = {"train": "Train_text", "val": "Val_text", "test": "Test_text"}
EXPORTABLE_STATUSES = ("corrected", "accepted")
KEPT_METADATA_KEYS = ("modality", "pixel_spacing")
VOLUME_FORMATS = ("authors", "nifti", "dicom-seg")
VOLUME_FOLDER = "volumes"


@dataclass
class ExportResult:
    root: Path
    counts: dict  # {'train': n, 'val': n, 'test': n}
    manifest_path: Path
    zip_path: Optional[Path] = None
    multi_rater_cases: int = 0  # cases labelled by their raters' consensus


# --------------------------------------------------------------------------------------
# splitting


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}.")
    return value


def _check_fractions(val_fraction, test_fraction) -> tuple:
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be below 1 so that some cases are left for training, "
            f"got {val_fraction} + {test_fraction} = {val_fraction + test_fraction:g}."
        )
    return val_fraction, test_fraction


def split_cases(case_ids: Iterable[int], *, val_fraction: float = 0.1, test_fraction: float = 0.2,
                seed: int = 0) -> dict:
    """Split case ids into ``{'train': [...], 'val': [...], 'test': [...]}`` (each list sorted).

    Deterministic for the same set of ids and seed: the sorted ids are shuffled with
    ``numpy.random.default_rng(seed)``, then the first ``val`` go to val, the next ``test`` to
    test and the rest to train. The sizes are ``medclipseg.datasets.splits.split_sizes`` of the
    ratios (train, val, test) = (1 - val_fraction - test_fraction, val_fraction, test_fraction):
    largest remainders; with ``n >= 3`` a split whose fraction is above 0 gets at least one case,
    and train always keeps at least one case. Fractions must lie in [0, 1) with a sum below 1
    (``ValueError`` otherwise); ids must be distinct integers.
    """
    val_fraction, test_fraction = _check_fractions(val_fraction, test_fraction)
    ids = []
    for case_id in case_ids:
        if isinstance(case_id, bool) or not isinstance(case_id, (int, np.integer)):
            raise ValueError(f"Case ids must be integers, got {case_id!r}.")
        ids.append(int(case_id))
    ids.sort()
    if len(set(ids)) != len(ids):
        raise ValueError("Case ids must be distinct.")
    n = len(ids)
    _, val, test = split_sizes(n, (1.0 - val_fraction - test_fraction, val_fraction, test_fraction))
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [ids[i] for i in order]
    return {
        "train": sorted(shuffled[val + test:]),
        "val": sorted(shuffled[:val]),
        "test": sorted(shuffled[val:val + test]),
    }


def _source_of(row: dict) -> str:
    """What must not be split: the image's pixels (a volume is one case, hence one scan whole)."""
    return row.get("content_hash") or f"case-{row['case_id']}"


def _split_by_image(rows: Sequence[dict], val_fraction: float, test_fraction: float, seed: int) -> dict:
    """case id -> split; cases with the same content hash follow their lowest case id.

    Gold cases (``cases.gold = 1``) are held out to score model versions, so they go to test, never
    to train or val (``medclipseg train --data`` must not learn from them); an image with a gold case
    goes there whole. The other images are split by the fractions."""
    groups: dict = {}
    for row in rows:
        key = _source_of(row)
        groups.setdefault(key, []).append(row)
    representative, split_of = {}, {}
    for members in groups.values():
        ids = [int(row["case_id"]) for row in members]
        if any(row.get("gold") for row in members):
            split_of.update((case_id, "test") for case_id in ids)
        else:
            representative[min(ids)] = ids
    splits = split_cases(representative, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    for split, leaders in splits.items():
        for leader in leaders:
            for case_id in representative[leader]:
                split_of[case_id] = split
    return split_of


# --------------------------------------------------------------------------------------
# helpers


def read_manifest(folder) -> Optional[dict]:
    """The manifest of a previous export in ``folder``, or None when it is not one."""
    path = Path(folder) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        return None
    return manifest


def _is_previous_export_zip(path: Path, name: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            data = archive.read(f"{name}/{MANIFEST_FILE}")
        return json.loads(data.decode("utf-8")).get("format") == FORMAT_NAME
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, AttributeError):
        return False


def _write_png(path: Path, array: np.ndarray) -> None:
    try:
        data = encode_png(array)
    except PNGError:
        raise OSError(f"Could not encode {path.name} as PNG.") from None
    path.write_bytes(data)


def _check_statuses(statuses) -> tuple:
    if isinstance(statuses, str):
        statuses = (statuses,)
    statuses = tuple(dict.fromkeys(statuses or ()))
    if not statuses:
        raise ValueError(f"Give at least one status to export ({', '.join(EXPORTABLE_STATUSES)}).")
    unknown = [s for s in statuses if s not in EXPORTABLE_STATUSES]
    if unknown:
        raise ValueError(
            f"Cannot export status {', '.join(map(repr, unknown))}: only {', '.join(EXPORTABLE_STATUSES)} "
            f"cases have a reviewed mask."
        )
    return statuses


def _binary_mask(mask: np.ndarray, case_id: int, width: int, height: int, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != (height, width):
        raise ValueError(
            f"The {what} of case {case_id} has shape {mask.shape}, but the image is {height}x{width} "
            f"(height x width); the store is inconsistent."
        )
    return np.where(mask.astype(bool), 255, 0).astype(np.uint8)


def _zip_folder(folder: Path, name: str, destination: Path) -> None:
    with zipfile.ZipFile(destination, "x", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{name}/{path.relative_to(folder).as_posix()}")


# --------------------------------------------------------------------------------------
# volumes


def _export_volume(store, row: dict, split: str, staging: Path, tables: dict, volume_format: str) -> dict:
    """One volume case: its reviewed slices (all slices when the version names none) into the authors'
    layout of its split, and (nifti, dicom-seg) the scan and masks on the scan's own grid. Returns its
    manifest entry."""
    from medclipseg.annotation import volume_files

    case_id = int(row["case_id"])
    stem = f"case{case_id:06d}"
    reviewed = json.loads(row.get("reviewed_slices") or "[]")
    geometry = store.volume_geometry(case_id)
    folder = staging / SPLIT_FOLDERS[split]
    slices = []
    predicted_mask = store.load_mask(row["predicted_mask_path"]) if row.get("predicted_mask_path") else None
    for index, image, mask in store.volume_slice_examples(case_id, _label_of(store, row), reviewed):
        name = f"{stem}_s{index:04d}.png"
        _write_png(folder / IMAGE_FOLDER / name, image)
        _write_png(folder / LABEL_FOLDER / name, np.where(mask, 255, 0).astype(np.uint8))
        if predicted_mask is not None:
            predicted = volume_files.mosaic_slice(predicted_mask, geometry, index).astype(bool)
            _write_png(staging / PREDICTED_FOLDER / name, np.where(predicted, 255, 0).astype(np.uint8))
        tables[split].append({"Image": name, "Description": row["prompt"], "Ground Truth": name})
        slices.append({"slice": index, "image": f"{SPLIT_FOLDERS[split]}/{IMAGE_FOLDER}/{name}",
                       "label": f"{SPLIT_FOLDERS[split]}/{LABEL_FOLDER}/{name}"})
    files = {}
    if volume_format in ("nifti", "dicom-seg"):
        files = _write_volume_files(store, row, staging / VOLUME_FOLDER / stem, volume_format)
        files = {key: f"{VOLUME_FOLDER}/{stem}/{value}" for key, value in files.items()}
    raters = {}
    if row.get("agreement") is not None:
        raters = _export_volume_raters(store, row, stem, [entry["slice"] for entry in slices], staging,
                                       volume_format)
    return {**raters,
        "case_id": case_id, "kind": "volume", "split": split, "gold": bool(row.get("gold")),
        "prompt": row["prompt"], "annotator": row.get("annotator"), "status": row.get("status"),
        "version": int(row["version"]), "model_id": row.get("model_id"), "scores": row["scores"] or {},
        "content_hash": row.get("content_hash"), "original_name": row.get("original_name"),
        "reviewed_slices": reviewed, "slices": slices, "files": files,
        # Where each slice's mask came from (drawn, interpolated, propagated; the rest: the model's).
        "slice_provenance": json.loads(row["slice_provenance"]) if row.get("slice_provenance") else None,
        "geometry": {"shape": list(geometry.file_shape), "affine": [list(r) for r in geometry.affine],
                     "orientation": geometry.orientation, "plane": geometry.plane,
                     "display_spacing": list(geometry.display_spacing), "modality": geometry.modality,
                     "source_format": geometry.source_format},
        "voxels_added": row.get("pixels_added"), "voxels_erased": row.get("pixels_erased"),
        "corrected_at": row.get("created_at"),
    }


def _write_volume_files(store, row: dict, folder: Path, volume_format: str) -> dict:
    """image.nii.gz, mask.nii.gz, probability.nii.gz, entropy.nii.gz (+ seg.dcm for a DICOM source) on
    the scan's own grid with its affine; returns {what: file name}."""
    from medclipseg.annotation import volume_files
    from medclipseg.io.volume_writers import structure_label, write_dicom_seg, write_nifti

    case_id = int(row["case_id"])
    folder.mkdir(parents=True)
    volume = store.load_volume(case_id)
    geometry = store.volume_geometry(case_id)
    mask = volume.from_display(volume_files.unmosaic(_label_of(store, row), geometry), plane=geometry.plane)
    files = {"image": "image.nii.gz", "mask": "mask.nii.gz"}
    write_nifti(volume, volume.array, folder / files["image"], dtype=np.float32)
    write_nifti(volume, mask.astype(np.uint8), folder / files["mask"], dtype=np.uint8)
    if row.get("prediction_id"):
        for name in ("probability", "entropy"):
            values = volume.from_display(store.prediction_maps_volume(int(row["prediction_id"]), name),
                                         plane=geometry.plane)
            files[name] = f"{name}.nii.gz"
            write_nifti(volume, values.astype(np.float32), folder / files[name], dtype=np.float32)
    if volume_format == "dicom-seg" and volume.dicom_headers:
        files["dicom_seg"] = "seg.dcm"
        model_id = str(row.get("model_id") or "medclipseg")
        write_dicom_seg(volume, mask.astype(bool), folder / files["dicom_seg"],
                        segment_label=structure_label(row["prompt"]),
                        model_name=model_id.split("@")[0], model_version=model_id,
                        algorithm_type="AUTOMATIC" if row.get("status") == "accepted" else "SEMIAUTOMATIC")
    return files


def _export_volume_raters(store, row: dict, stem: str, slice_indexes: list, staging: Path,
                          volume_format: str) -> dict:
    """Each rater's newest mask of a volume case under raters/raterNN/: the exported slices as PNG
    (``<stem>_sNNNN.png``, beside the consensus label of each), and with nifti or dicom-seg the whole
    mask on the scan's own grid (``<stem>.nii.gz``); plus the case's agreement (3-D)."""
    from medclipseg.annotation import volume_files
    from medclipseg.io.volume_writers import write_nifti

    case_id = int(row["case_id"])
    geometry = store.volume_geometry(case_id)
    masks, found = row["rater_masks"], row["agreement"]  # stacked slices, voxel for voxel
    volume = store.load_volume(case_id) if volume_format in ("nifti", "dicom-seg") else None
    paths = {}
    for number, rater in enumerate(found.raters):
        folder = f"{RATERS_FOLDER}/rater{number + 1:02d}"  # user names stay out of file names
        (staging / folder).mkdir(parents=True, exist_ok=True)
        written = {"slices": []}
        for index in slice_indexes:
            name = f"{stem}_s{index:04d}.png"
            plane = volume_files.mosaic_slice(masks[rater], geometry, index).astype(bool)
            _write_png(staging / folder / name, np.where(plane, 255, 0).astype(np.uint8))
            written["slices"].append(f"{folder}/{name}")
        if volume is not None:
            mask = volume.from_display(volume_files.unmosaic(masks[rater], geometry), plane=geometry.plane)
            write_nifti(volume, mask.astype(np.uint8), staging / folder / f"{stem}.nii.gz", dtype=np.uint8)
            written["mask"] = f"{folder}/{stem}.nii.gz"
        paths[rater] = written
    return {"label_kind": CONSENSUS_LABELS[found.method], "raters": paths, "agreement": found.summary()}


# --------------------------------------------------------------------------------------
# export


def _export_raters(row: dict, name: str, width: int, height: int, staging: Path) -> dict:
    """Each rater's newest mask of a 2-D case under raters/raterNN/, and the case's agreement."""
    case_id, masks, found = int(row["case_id"]), row["rater_masks"], row["agreement"]
    paths = {}
    for index, rater in enumerate(found.raters):
        folder = f"{RATERS_FOLDER}/rater{index + 1:02d}"  # user names stay out of file names
        (staging / folder).mkdir(parents=True, exist_ok=True)
        mask = masks[rater]
        _write_png(staging / folder / name, _binary_mask(mask, case_id, width, height, f"{rater}'s mask"))
        paths[rater] = f"{folder}/{name}"
    return {"label_kind": CONSENSUS_LABELS[found.method], "raters": paths, "agreement": found.summary()}


def _label_of(store, row: dict) -> np.ndarray:
    """The mask a case exports as its label: the version's own, or its raters' consensus."""
    return row["label_mask"] if row.get("label_mask") is not None else store.load_mask(row["mask_path"])


def _with_consensus(store, row: dict, method: str) -> dict:
    """The row of a case with several raters, given its raters' masks, their agreement and their
    consensus by `method` as the label (read per case, so that one case's masks are in memory at a time)."""
    from medclipseg.team.agreement import agreement

    if (row.get("rater_count") or 0) <= 1:
        return row
    masks = store.rater_masks(int(row["case_id"]))
    found = agreement(masks, method=method)
    return {**row, "rater_masks": masks, "agreement": found, "label_mask": found.consensus}


def export_dataset(store, out_dir, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                   statuses=EXPORTABLE_STATUSES, annotator: Optional[str] = None, make_zip: bool = False,
                   overwrite: bool = False, volume_format: str = "authors", consensus: str = "staple") -> ExportResult:
    """Write the latest corrected/accepted version of every case as a dataset in the authors' layout.

    ``store`` is a ``medclipseg.annotation.store.AnnotationStore``. ``statuses`` selects correction statuses
    and ``annotator`` one annotator's corrections; cases whose current status is 'skipped' are left
    out. ``out_dir`` must be missing or empty, unless ``overwrite`` is set, in which case it may
    also hold a previous export (recognised by its manifest); any other folder is refused.
    ``make_zip`` also writes ``<out_dir>.zip`` holding ``<out_dir name>/...``.
    ``volume_format``: volume cases always add their reviewed slices to the authors' layout
    (``authors``); ``nifti`` also writes each volume's scan and mask (and the model's probability and
    entropy) as NIfTI on the scan's own grid; ``dicom-seg`` writes, besides the NIfTI files, a DICOM-SEG
    for every DICOM-sourced volume. The manifest lists every file of each volume case.
    ``consensus``: the label of a case with several raters, ``staple`` (their STAPLE estimate, as
    training uses) or ``majority`` (a voxel is in where more than half of the raters drew it).
    Raises ``ValueError`` for bad arguments, a refused destination or nothing to export.
    """
    if volume_format not in VOLUME_FORMATS:
        raise ValueError(f"The export format must be one of {', '.join(VOLUME_FORMATS)}, not {volume_format!r}.")
    if consensus not in CONSENSUS_LABELS:
        raise ValueError(f"The consensus must be one of {', '.join(CONSENSUS_LABELS)}, not {consensus!r}.")
    val_fraction, test_fraction = _check_fractions(val_fraction, test_fraction)
    statuses = _check_statuses(statuses)
    if annotator is not None:
        annotator = str(annotator).strip() or None
    out_dir = Path(out_dir).expanduser().absolute()
    if not out_dir.name or out_dir.name in (".", ".."):
        raise ValueError(f"'{out_dir}' cannot be used as an export folder: give a folder name.")
    replace_existing = check_destination(
        out_dir, is_ours=lambda folder: read_manifest(folder) is not None, what="a previous MedCLIPSeg export",
        marker=f"{MANIFEST_FILE} with format '{FORMAT_NAME}'", overwrite=overwrite) != "missing"
    zip_path = out_dir.with_name(out_dir.name + ".zip")
    if make_zip and (zip_path.exists() or zip_path.is_symlink()):
        if not overwrite:
            raise ValueError(f"'{zip_path}' already exists; pass overwrite (--overwrite) to replace it.")
        if not zip_path.is_file() or not _is_previous_export_zip(zip_path, out_dir.name):
            raise ValueError(f"Refusing to overwrite '{zip_path}': it is not a previous MedCLIPSeg export.")

    rows = store.corrections(latest_only=True, statuses=statuses, annotator=annotator,
                             approved_only=store.project_settings().review_required)
    # A skipped case is left out, and so is a case some of whose raters have not saved yet (its
    # status stays unreviewed until the last one does): it is exported, as it trains, once complete.
    rows = [row for row in rows if row["case_status"] in EXPORTABLE_STATUSES]
    if not rows:
        who = f" by annotator '{annotator}'" if annotator else ""
        raise ValueError(
            f"There are no corrected or accepted cases to export yet (looked for status "
            f"{' or '.join(statuses)}{who}). Review some cases in the annotation app first."
        )
    split_of = _split_by_image(rows, val_fraction, test_fraction, seed)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Created with mkdir (not mkdtemp) so that the export gets the usual permissions (umask).
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    staged_zip: Optional[Path] = None
    try:
        for split in SPLITS:
            for sub in (IMAGE_FOLDER, LABEL_FOLDER):
                (staging / SPLIT_FOLDERS[split] / sub).mkdir(parents=True)
        (staging / PROMPTS_FOLDER).mkdir()
        (staging / PREDICTED_FOLDER).mkdir()

        tables = {split: [] for split in SPLITS}
        entries = []
        for row in rows:
            case_id = int(row["case_id"])
            split = split_of[case_id]
            row = _with_consensus(store, row, consensus)
            if row.get("kind") == "volume":
                entries.append(_export_volume(store, row, split, staging, tables, volume_format))
                continue
            width, height = int(row["width"]), int(row["height"])
            name = f"case{case_id:06d}.png"
            image = np.asarray(store.load_image(case_id))
            if image.shape[:2] != (height, width):
                raise ValueError(
                    f"The stored image of case {case_id} is {image.shape[0]}x{image.shape[1]}, but the case "
                    f"records {height}x{width}; the store is inconsistent."
                )
            label = _binary_mask(_label_of(store, row), case_id, width, height, "corrected mask")
            folder = staging / SPLIT_FOLDERS[split]
            _write_png(folder / IMAGE_FOLDER / name, image)
            _write_png(folder / LABEL_FOLDER / name, label)
            predicted_label = None
            if row.get("predicted_mask_path"):
                predicted = _binary_mask(store.load_mask(row["predicted_mask_path"]), case_id, width, height,
                                         "predicted mask")
                _write_png(staging / PREDICTED_FOLDER / name, predicted)
                predicted_label = f"{PREDICTED_FOLDER}/{name}"
            tables[split].append({"Image": name, "Description": row["prompt"], "Ground Truth": name})
            entry = {
                "case_id": case_id,
                "split": split,
                "gold": bool(row.get("gold")),  # held out to score model versions: in test only
                "image": f"{SPLIT_FOLDERS[split]}/{IMAGE_FOLDER}/{name}",
                "label": f"{SPLIT_FOLDERS[split]}/{LABEL_FOLDER}/{name}",
                "predicted_label": predicted_label,
                "prompt": row["prompt"],
                "annotator": row.get("annotator"),
                "status": row.get("status"),
                "version": int(row["version"]),
                "model_id": row.get("model_id"),
                "scores": row["scores"] or {},
                "pixels_added": row.get("pixels_added"),
                "pixels_erased": row.get("pixels_erased"),
                "pixels_changed": row.get("pixels_changed"),
                "content_hash": row.get("content_hash"),
                "original_name": row.get("original_name"),
                "width": width,
                "height": height,
                "corrected_at": row.get("created_at"),
            }
            metadata = {key: row["metadata"][key] for key in KEPT_METADATA_KEYS if key in row["metadata"]}
            if metadata:
                entry["metadata"] = metadata
            if row.get("agreement") is not None:
                entry.update(_export_raters(row, name, width, height, staging))
            entries.append(entry)

        for split in SPLITS:
            for suffix in TABLE_SUFFIXES:
                write_prompt_table(staging / PROMPTS_FOLDER / f"{TABLE_STEMS[split]}{suffix}", tables[split])

        from medclipseg import __version__

        counts = {split: len(tables[split]) for split in SPLITS}
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "medclipseg_version": __version__,
            "params": {
                "val_fraction": val_fraction,
                "test_fraction": test_fraction,
                "seed": seed,
                "statuses": list(statuses),
                "annotator": annotator,
                "split_unit": "image (a volume is one case: all its slices in one split)",
                "volume_format": volume_format,
                "gold_split": "test",  # where gold cases go, whatever the fractions
            },
            "counts": counts,
            "cases": entries,
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")

        if make_zip:
            staged_zip = out_dir.parent / f".{zip_path.name}.partial-{uuid.uuid4().hex[:12]}"
            _zip_folder(staging, out_dir.name, staged_zip)

        # Swap into place: move the old folder aside, rename, then delete the old one.
        backup = None
        if replace_existing:
            backup = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, backup / "previous")
        try:
            os.replace(staging, out_dir)
        except BaseException:
            if backup is not None:
                os.replace(backup / "previous", out_dir)
                shutil.rmtree(backup, ignore_errors=True)
            raise
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if staged_zip is not None and staged_zip.exists():
            staged_zip.unlink()
        raise

    result_zip = None
    if staged_zip is not None:
        os.replace(staged_zip, zip_path)
        result_zip = zip_path
    return ExportResult(root=out_dir, counts=counts, manifest_path=out_dir / MANIFEST_FILE, zip_path=result_zip,
                        multi_rater_cases=sum(1 for entry in entries if "raters" in entry))
