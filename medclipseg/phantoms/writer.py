"""Writing a phantom data set in the authors' layout, and its ``phantoms.json`` manifest.

The layout's tables may not list an image twice, so an image with k >= 2 targets is written as
k identical image files ``<modality>_<index>_t<j>.png``, one per selection row, each with the
mask of target j; ``targets/`` beside ``img/`` and ``label/`` holds every target mask of those
images for selection checks. ``phantoms.json`` records every row (prompts, target attributes,
shift, seeds); ``read_manifest`` is the one reader of it.
"""
from __future__ import annotations

import json
import math
import os
import time
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from medclipseg.datasets.layout import (
    IMAGE_FOLDER,
    LABEL_FOLDER,
    PROMPT_DESIGNS,
    PROMPTS_FOLDER,
    SPLIT_FOLDERS,
    SPLITS,
    write_prompt_table,
)
from medclipseg.datasets.splits import prepare_generated_output, split_sizes
from medclipseg.io.png import encode_png
from medclipseg.phantoms.generate import (
    Phantom,
    check_count_probs,
    check_seed,
    derive_image_seed,
    generate_phantom,
    modality_code,
)
from medclipseg.phantoms.prompts import MAX_PROMPT_TOKENS
from medclipseg.phantoms.vocabulary import IMAGE_SIZE_RANGE, MODALITIES, SIZE_BINS, TARGET_COUNT_PROBS

GENERATOR = "medclipseg.phantoms"
VERSION = 1
MANIFEST_FILE = "phantoms.json"
SUBSET_PERCENTAGES = (10, 25, 50)
MASK_COMPRESSION = 3  # zlib level of mask PNGs; images use 1 (noise barely compresses)
_OWNED_ENTRIES = tuple(SPLIT_FOLDERS.values()) + (PROMPTS_FOLDER, MANIFEST_FILE)


def read_manifest(folder) -> Optional[dict]:
    """The ``phantoms.json`` of a data set written here, or None (no file, unreadable, or another
    program's). An interrupted run leaves a manifest with ``complete`` false and no records."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        return None
    return manifest


def records_by_row(folder) -> dict:
    """{(image, ground truth): record} of the manifest's table rows; {} for other data sets."""
    manifest = read_manifest(folder) or {}
    return {(record["image"], record.get("ground_truth")): record for record in manifest.get("records", [])}


def _prepare_output(out: Path) -> None:
    prepare_generated_output(out, is_ours=lambda folder: read_manifest(folder) is not None, what="a previous phantom output",
                             manifest_file=MANIFEST_FILE, generator=GENERATOR, owned_entries=_OWNED_ENTRIES,
                             marker_content=json.dumps({"generator": GENERATOR, "version": VERSION, "complete": False}))


def _mask_png(mask: np.ndarray) -> bytes:
    return encode_png(mask.astype(np.uint8) * 255, compression=MASK_COMPRESSION)


def _subset_rng(seed: int, modality: str, split: str) -> np.random.Generator:
    return np.random.default_rng([check_seed(seed), modality_code(modality), zlib.crc32(split.encode()), 99])


def write_dataset(out, per_modality: int, seed: int, shift: bool = False, modalities=MODALITIES,
                  split_ratios=(0.7, 0.1, 0.2), progress: bool = False, *,
                  target_count_probs: Sequence[float] = TARGET_COUNT_PROBS) -> dict:
    """Write ``per_modality`` phantoms of each modality in the authors' layout plus phantoms.json.

    Splits are by image and stratified by modality (``split_ratios`` = train, val, test).
    Train/Val tables use the original prompts; the test split gets one table per prompt design;
    ``Train_text_<pct>`` / ``Val_text_<pct>`` (10, 25, 50) are nested image subsets, stratified
    by modality. Tables are written as .xlsx and .csv. Refuses (FileExistsError) a non-empty
    folder that is not a previous phantom output; a previous output is replaced.
    Returns a summary: counts per split and modality, rows, seconds.
    """
    started = time.perf_counter()
    out = Path(out)
    modalities = tuple(modalities)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must be distinct values of {', '.join(MODALITIES)}; got {list(modalities)}")
    if isinstance(per_modality, bool) or not isinstance(per_modality, (int, np.integer)) or per_modality < 1:
        raise ValueError(f"per_modality must be a positive integer, got {per_modality!r}")
    ratios = [float(r) for r in split_ratios]
    if len(ratios) != 3 or any(r < 0 or not math.isfinite(r) for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"split_ratios must be three non-negative numbers (train, val, test), got {split_ratios!r}")
    check_seed(seed)
    check_count_probs(target_count_probs)
    _prepare_output(out)
    for split in SPLITS:
        for sub in (IMAGE_FOLDER, LABEL_FOLDER):
            (out / SPLIT_FOLDERS[split] / sub).mkdir(parents=True, exist_ok=True)

    split_of = {}
    for modality in modalities:
        order = _subset_rng(seed, modality, "split").permutation(per_modality)
        counts = split_sizes(per_modality, ratios)
        bounds = np.cumsum([0] + counts)
        for split_index, split in enumerate(SPLITS):
            for index in order[bounds[split_index]:bounds[split_index + 1]]:
                split_of[(modality, int(index))] = split

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=per_modality * len(modalities), desc="phantoms", unit="img")
    records = []
    generation_seconds = 0.0
    for modality in modalities:
        for index in range(per_modality):
            image_seed = derive_image_seed(seed, modality, index)
            tick = time.perf_counter()
            phantom = generate_phantom(modality, image_seed, shifted=shift, target_count_probs=target_count_probs)
            rows = phantom.rows()
            generation_seconds += time.perf_counter() - tick
            records.extend(_write_image(out, split_of[(modality, index)], modality, index, image_seed, phantom, rows))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    subsets = _choose_subsets(records, seed, modalities)
    for record in records:
        record["subsets"] = sorted(pct for pct, images in subsets.get(record["split"], {}).items()
                                   if record["image_id"] in images)
    tables = _write_tables(out, records, subsets)
    seconds = time.perf_counter() - started
    summary = {
        "out": str(out), "seed": int(seed), "per_modality": int(per_modality), "shift": bool(shift),
        "images": len({r["image_id"] for r in records}), "rows": len(records),
        "splits": {split: {
            "images": len({r["image_id"] for r in records if r["split"] == split}),
            "rows": sum(1 for r in records if r["split"] == split),
            "per_modality": {m: len({r["image_id"] for r in records if r["split"] == split and r["modality"] == m})
                             for m in modalities},
        } for split in SPLITS},
        "tables": tables,
        "seconds": round(seconds, 2),
        "generation_images_per_second": round(per_modality * len(modalities) / max(generation_seconds, 1e-9), 1),
    }
    manifest = {
        "generator": GENERATOR, "version": VERSION, "complete": True, "seed": int(seed),
        "per_modality": int(per_modality), "shift": bool(shift), "modalities": list(modalities),
        "split_ratios": ratios, "size_range": list(IMAGE_SIZE_RANGE),
        "target_count_probs": [float(p) for p in check_count_probs(target_count_probs)],
        "size_bins": SIZE_BINS, "prompt_designs": list(PROMPT_DESIGNS), "max_prompt_tokens": MAX_PROMPT_TOKENS,
        "summary": {k: v for k, v in summary.items() if k != "out"},
        "records": records,
    }
    temporary = out / f".{MANIFEST_FILE}.tmp"
    temporary.write_text(json.dumps(manifest, separators=(",", ":")), encoding="utf-8")
    os.replace(temporary, out / MANIFEST_FILE)
    return summary


def _write_image(out: Path, split: str, modality: str, index: int, image_seed: int, phantom: Phantom,
                 rows: list) -> list:
    """Write the image (one copy per selection row), masks and targets; return the records."""
    folder = out / SPLIT_FOLDERS[split]
    image_id = f"{modality}_{index:05d}"
    selection = len(rows) > 1
    names = [f"{image_id}_t{row['target_index']}.png" for row in rows] if selection else [f"{image_id}.png"]
    image_bytes = encode_png(phantom.image, compression=1)  # noisy images barely compress: favour speed
    height, width = phantom.image.shape[:2]
    if selection:
        (folder / "targets").mkdir(exist_ok=True)
        for j, target in enumerate(phantom.targets):
            (folder / "targets" / f"{image_id}_t{j}.png").write_bytes(_mask_png(target.mask))
    records = []
    for row, name in zip(rows, names):
        (folder / IMAGE_FOLDER / name).write_bytes(image_bytes)
        (folder / LABEL_FOLDER / name).write_bytes(_mask_png(row["mask"]))
        target = phantom.targets[row["target_index"]] if row["target_index"] is not None else None
        records.append({
            "split": split, "image": name, "ground_truth": name, "image_id": image_id, "modality": modality,
            "index": index, "seed": image_seed, "width": width, "height": height,
            "prompts": dict(row["prompts"]), "caption": phantom.caption,
            "num_targets": len(phantom.targets), "selection": selection, "target_index": row["target_index"],
            "target": target.describe() if target is not None else None,
            "other_targets": [f"{image_id}_t{j}.png" for j in row["other_indices"]],
            "contradicted": list(row["contradicted"]),
            "selectable_without_location": bool(row["selectable_without_location"]),
            "shifted": phantom.shifted, "shift": asdict(phantom.shift), "facts": dict(phantom.facts),
        })
    return records


def _choose_subsets(records: list, seed: int, modalities: Sequence[str]) -> dict:
    """{split: {pct: set of image ids}} for train and val: nested, stratified by modality."""
    subsets = {}
    for split in ("train", "val"):
        chosen = {pct: set() for pct in SUBSET_PERCENTAGES}
        for modality in modalities:
            images = sorted({r["image_id"] for r in records if r["split"] == split and r["modality"] == modality})
            if not images:
                continue
            order = [images[i] for i in _subset_rng(seed, modality, split + "/subset").permutation(len(images))]
            for pct in SUBSET_PERCENTAGES:  # prefixes of one order: 10% within 25% within 50%
                chosen[pct].update(order[: max(1, math.ceil(pct * len(images) / 100 - 1e-9))])
        subsets[split] = chosen
    return subsets


def _write_tables(out: Path, records: list, subsets: dict) -> list:
    folder = out / PROMPTS_FOLDER
    folder.mkdir(exist_ok=True)

    def rows_for(split, design="original", images=None):
        return [{"Image": r["image"], "Description": r["prompts"][design], "Ground Truth": r["ground_truth"]}
                for r in records if r["split"] == split and (images is None or r["image_id"] in images)]

    tables = {"Train_text": rows_for("train"), "Val_text": rows_for("val")}
    for design in PROMPT_DESIGNS:
        tables[f"Test_text_{design}"] = rows_for("test", design)
    for pct in SUBSET_PERCENTAGES:
        tables[f"Train_text_{pct}"] = rows_for("train", images=subsets["train"][pct])
        tables[f"Val_text_{pct}"] = rows_for("val", images=subsets["val"][pct])
    written = []
    for stem, rows in tables.items():
        for suffix in (".xlsx", ".csv"):
            write_prompt_table(folder / f"{stem}{suffix}", rows)
            written.append(f"{stem}{suffix}")
    return written
