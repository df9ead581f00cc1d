"""Real MRI slices with real labels: axial slices of the Colin27 T1 from Debian's ``mricron-data``.

The package installs one subject's T1 (``ch2.nii.gz``, 181 x 217 x 181 at 1 mm), its
brain-extracted copy (``ch2bet.nii.gz``; brain = ch2bet > 0) and the AAL atlas in the same space
(``aal.nii.gz``, label names in ``aal.nii.txt``). ``write_realdata`` writes 2-D axial slices of
the T1 with one mask per structure (left and right together) in the authors' layout, which
``medclipseg.datasets.layout.load_split`` reads:

- every volume is reoriented to the closest canonical (RAS) orientation; a slice is shown with
  anterior at the top in the radiological convention (the subject's right on the image's left);
- the T1 is windowed once for the whole volume (percentiles of the voxels inside the brain) to
  uint8, so every slice shares one window;
- slices where a structure is present get "<Structure> in the brain MRI image."; slices within
  ``margin`` mm above and below its extent where it is absent get "No <structure> in the brain
  MRI image." and an empty mask;
- a slice's split follows its position: contiguous blocks of ``block`` slices take turns in a
  fixed pattern of train/val/test, the same for every structure, so one image is in one split.

``realdata.json`` records every image (structure, slice index, split, presence, pixels, prompt),
the window and the source files' hashes; ``read_manifest`` is its reader. Slices of one subject
correlate: scores on these splits measure adaptation to one scanner and subject, not generalisation.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

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
from medclipseg.datasets.splits import prepare_generated_output, split_sizes

__all__ = [
    "DEFAULT_TEMPLATES_DIR",
    "DEFAULT_STRUCTURES",
    "STRUCTURES",
    "INSTALL_HINT",
    "MANIFEST_FILE",
    "ORIENTATION",
    "Structure",
    "TemplatesMissingError",
    "RealDataResult",
    "Volumes",
    "templates_available",
    "check_templates",
    "load_volumes",
    "structure_mask",
    "intensity_window",
    "apply_window",
    "axial_slice",
    "block_pattern",
    "split_of_slice",
    "write_realdata",
    "read_manifest",
]

PathLike = Union[str, os.PathLike]

DEFAULT_TEMPLATES_DIR = Path("/usr/share/mricron/templates")
INSTALL_HINT = "install it with: apt-get install mricron-data"
T1_FILE = "ch2.nii.gz"
BRAIN_FILE = "ch2bet.nii.gz"
ATLAS_FILE = "aal.nii.gz"
ATLAS_NAMES_FILE = "aal.nii.txt"
REQUIRED_FILES = (T1_FILE, BRAIN_FILE, ATLAS_FILE, ATLAS_NAMES_FILE)

GENERATOR = "medclipseg.datasets.realdata"
VERSION = 1
MANIFEST_FILE = "realdata.json"
TABLE_STEMS = {"train": "Train_text", "val": "Val_text", "test": "Test_text"}
ORIENTATION = ("axial slices of the RAS-canonical volume; anterior at the top; radiological convention "
               "(the subject's right on the image's left)")
PROMPT_CONTEXT = "in the brain MRI image"
DEFAULT_PERCENTILES = (0.5, 99.5)
DEFAULT_SPLIT_RATIOS = (0.6, 0.1, 0.3)
DEFAULT_PATTERN_BLOCKS = 7  # blocks per repeat of the split pattern: 4 train, 1 val, 2 test at 0.6/0.1/0.3
_OWNED_ENTRIES = tuple(SPLIT_FOLDERS.values()) + (PROMPTS_FOLDER, MANIFEST_FILE)


@dataclass(frozen=True)
class Structure:
    """A target: ``name`` keys files and the manifest, ``noun`` goes into prompts; ``atlas_labels``
    are AAL label names joined into one mask (empty: the brain, ch2bet > 0)."""

    name: str
    noun: str
    atlas_labels: tuple = ()

    def prompt(self, present: bool) -> str:
        if present:
            return f"{self.noun[0].upper()}{self.noun[1:]} {PROMPT_CONTEXT}."
        return f"No {self.noun} {PROMPT_CONTEXT}."


STRUCTURES = {
    "brain": Structure("brain", "brain tissue"),
    "caudate": Structure("caudate", "caudate nucleus", ("Caudate_L", "Caudate_R")),
    "putamen": Structure("putamen", "putamen", ("Putamen_L", "Putamen_R")),
    "thalamus": Structure("thalamus", "thalamus", ("Thalamus_L", "Thalamus_R")),
    "hippocampus": Structure("hippocampus", "hippocampus", ("Hippocampus_L", "Hippocampus_R")),
}
DEFAULT_STRUCTURES = tuple(STRUCTURES)


class TemplatesMissingError(FileNotFoundError):
    """The ``mricron-data`` templates are not where they were looked for."""


# --------------------------------------------------------------------------------------
# the source volumes


def templates_available(path: PathLike = DEFAULT_TEMPLATES_DIR) -> bool:
    """Whether ``path`` holds the T1, its brain extraction and the AAL atlas with its names."""
    folder = Path(path)
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def check_templates(path: PathLike = DEFAULT_TEMPLATES_DIR) -> Path:
    """``path`` as a Path when it holds the templates; ``TemplatesMissingError`` in words otherwise."""
    folder = Path(path)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise TemplatesMissingError(
            f"The MRI templates of the Debian package mricron-data are missing in '{folder}' "
            f"(no {', '.join(missing)}); {INSTALL_HINT}")
    return folder


@dataclass
class Volumes:
    """The three volumes on one RAS-canonical grid (x: to the right, y: anterior, z: superior)."""

    t1: np.ndarray          # the T1 as stored (ch2)
    brain: np.ndarray       # bool, ch2bet > 0
    atlas: np.ndarray       # AAL label numbers
    label_numbers: dict     # AAL label name -> number, from aal.nii.txt
    voxel_mm: tuple
    affine: np.ndarray
    files: dict = field(default_factory=dict)  # file name -> sha256


def _read_label_names(path: Path) -> dict:
    numbers = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            numbers[parts[1]] = int(parts[0])
    return numbers


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_volumes(templates: PathLike = DEFAULT_TEMPLATES_DIR) -> Volumes:
    """Read ch2, ch2bet and aal (nibabel), reoriented with ``nibabel.as_closest_canonical``."""
    folder = check_templates(templates)
    try:
        import nibabel
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError("Reading NIfTI volumes needs nibabel: pip install nibabel") from None

    arrays, affine, zooms = {}, None, None
    for name in (T1_FILE, BRAIN_FILE, ATLAS_FILE):
        image = nibabel.as_closest_canonical(nibabel.load(str(folder / name)))
        data = np.asanyarray(image.dataobj)
        if data.ndim != 3:
            raise ValueError(f"'{folder / name}' is not a 3-D volume (shape {data.shape}).")
        if affine is None:
            affine, zooms = image.affine, tuple(float(z) for z in image.header.get_zooms()[:3])
        elif data.shape != arrays[T1_FILE].shape or not np.allclose(image.affine, affine, atol=1e-4):
            raise ValueError(f"'{folder / name}' is not on the grid of {T1_FILE}; the templates do not match.")
        arrays[name] = data
    return Volumes(
        t1=arrays[T1_FILE], brain=arrays[BRAIN_FILE] > 0,
        atlas=np.rint(arrays[ATLAS_FILE]).astype(np.int32),
        label_numbers=_read_label_names(folder / ATLAS_NAMES_FILE), voxel_mm=zooms, affine=np.asarray(affine),
        files={name: _sha256(folder / name) for name in REQUIRED_FILES},
    )


def structure_mask(volumes: Volumes, structure: Structure) -> np.ndarray:
    """The structure's boolean volume: the brain mask, or the union of its AAL labels."""
    if not structure.atlas_labels:
        return volumes.brain
    missing = [name for name in structure.atlas_labels if name not in volumes.label_numbers]
    if missing:
        raise ValueError(f"{ATLAS_NAMES_FILE} names no label {', '.join(missing)}.")
    numbers = [volumes.label_numbers[name] for name in structure.atlas_labels]
    mask = np.isin(volumes.atlas, numbers)
    if not mask.any():
        raise ValueError(f"The atlas has no voxel of {structure.name} (labels {numbers}).")
    return mask


# --------------------------------------------------------------------------------------
# intensities and orientation


def intensity_window(t1: np.ndarray, brain: np.ndarray, percentiles=DEFAULT_PERCENTILES) -> tuple:
    """(low, high): the percentiles of the T1 inside the brain, the one window of the volume."""
    low_pct, high_pct = (float(p) for p in percentiles)
    if not 0 <= low_pct < high_pct <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    low, high = np.percentile(np.asarray(t1, np.float64)[brain], [low_pct, high_pct])
    if not high > low:
        raise ValueError(f"The T1 is constant inside the brain ({low:g}); it cannot be windowed.")
    return float(low), float(high)


def apply_window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """uint8 grey: ``low`` -> 0, ``high`` -> 255, linear between, clipped outside."""
    scaled = (np.asarray(values, np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def axial_slice(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of a RAS volume as rows x columns: anterior at the top, the subject's
    right on the left (radiological). Pixel [r, c] is voxel [X-1-c, Y-1-r, z]."""
    return np.ascontiguousarray(volume[::-1, ::-1, z].T)


# --------------------------------------------------------------------------------------
# the split by slice position


def block_pattern(split_ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS,
                  blocks: int = DEFAULT_PATTERN_BLOCKS) -> tuple:
    """The split of each block in one repeat of ``blocks`` blocks, interleaved evenly.

    Each split gets ``split_sizes(blocks, split_ratios)`` blocks; they are dealt by smooth
    weighted round robin, so that the val and test blocks are spread between train blocks
    (0.6/0.1/0.3 over 7 blocks: train, test, train, val, train, test, train).
    """
    if isinstance(blocks, bool) or not isinstance(blocks, (int, np.integer)) or blocks < 1:
        raise ValueError(f"blocks must be a positive integer, got {blocks!r}")
    counts = split_sizes(int(blocks), split_ratios)
    credit = [0] * len(SPLITS)
    pattern = []
    for _ in range(int(blocks)):
        credit = [c + n for c, n in zip(credit, counts)]
        chosen = max(range(len(SPLITS)), key=lambda i: (credit[i], -i))
        credit[chosen] -= int(blocks)
        pattern.append(SPLITS[chosen])
    return tuple(pattern)


def split_of_slice(z: int, block: int, pattern: Sequence[str]) -> str:
    """The split of slice ``z``: its block ``z // block`` takes its turn in ``pattern``."""
    return pattern[(int(z) // int(block)) % len(pattern)]


# --------------------------------------------------------------------------------------
# writing


@dataclass
class RealDataResult:
    root: Path
    counts: dict           # {structure: {split: {"present": n, "absent": n}}}
    images: int
    window: tuple          # (low, high) in the T1's values
    manifest_path: Path
    seconds: float

    def summary(self) -> dict:
        """A JSON-ready summary (what the CLI prints)."""
        return {"out": str(self.root), "images": self.images, "window": list(self.window),
                "counts": self.counts, "seconds": round(self.seconds, 2)}


def read_manifest(folder: PathLike) -> Optional[dict]:
    """The ``realdata.json`` of a folder written here, or None (no file, unreadable, another program's).
    An interrupted run leaves one with ``complete`` false and no images."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        return None
    return manifest


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return int(value)


def _resolve_structures(structures) -> tuple:
    if isinstance(structures, (str, Structure)):
        structures = (structures,)
    resolved = []
    for item in structures:
        if isinstance(item, Structure):
            resolved.append(item)
        elif item in STRUCTURES:
            resolved.append(STRUCTURES[item])
        else:
            raise ValueError(f"Unknown structure {item!r}; choose from {', '.join(STRUCTURES)}.")
    names = [s.name for s in resolved]
    if not resolved or len(set(names)) != len(names):
        raise ValueError(f"Give distinct structures (from {', '.join(STRUCTURES)}), got {names}.")
    return tuple(resolved)


def _plan(volumes: Volumes, structures: tuple, stride: int, margin: int, block: int, pattern: tuple) -> list:
    """One row per image to write: structure, slice, presence, split; checked before anything is written."""
    from medclipseg.phantoms.prompts import MAX_PROMPT_TOKENS, count_tokens

    depth = volumes.t1.shape[2]
    wanted_splits = set(pattern)
    rows = []
    for structure in structures:
        for present in (True, False):
            prompt = structure.prompt(present)
            if count_tokens(prompt) > MAX_PROMPT_TOKENS:
                raise ValueError(f"The prompt {prompt!r} is longer than {MAX_PROMPT_TOKENS} tokens.")
        mask = structure_mask(volumes, structure)
        pixels_per_slice = mask.sum(axis=(0, 1))
        occupied = np.flatnonzero(pixels_per_slice)
        first, last = int(occupied[0]), int(occupied[-1])
        chosen = []
        for z in range(max(0, first - margin), min(depth - 1, last + margin) + 1):
            if z % stride:
                continue
            chosen.append({"structure": structure.name, "slice": z, "present": bool(pixels_per_slice[z]),
                           "pixels": int(pixels_per_slice[z]), "split": split_of_slice(z, block, pattern),
                           "block": z // block, "prompt": structure.prompt(bool(pixels_per_slice[z]))})
        lacking = sorted(wanted_splits - {row["split"] for row in chosen if row["present"]},
                         key=SPLITS.index)
        if lacking:
            raise ValueError(
                f"With blocks of {block} slices and a stride of {stride}, {structure.name} (slices {first}-{last}) "
                f"has no slice in the {', '.join(lacking)} split; choose a smaller block or stride.")
        rows.extend(chosen)
    return rows


def _prepare_output(out: Path) -> None:
    prepare_generated_output(out, is_ours=lambda folder: read_manifest(folder) is not None, what="a previous realdata output",
                             manifest_file=MANIFEST_FILE, generator=GENERATOR, owned_entries=_OWNED_ENTRIES,
                             marker_content=json.dumps({"generator": GENERATOR, "version": VERSION, "complete": False}))


def write_realdata(out: PathLike, *, templates: PathLike = DEFAULT_TEMPLATES_DIR,
                   structures: Sequence = DEFAULT_STRUCTURES, stride: int = 1, margin: int = 8, block: int = 3,
                   split_ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS,
                   pattern_blocks: int = DEFAULT_PATTERN_BLOCKS,
                   percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> RealDataResult:
    """Write axial slices of the ``mricron-data`` T1 with structure masks in the authors' layout.

    ``stride`` keeps every stride-th slice (z divisible by it); ``margin`` is how many slices
    above and below a structure's extent are written as absent slices; ``block`` slices form one
    block of the split, and ``pattern_blocks`` blocks one repeat of the pattern of
    ``split_ratios`` (train, val, test). Raises ``TemplatesMissingError`` without the package,
    ``ValueError`` when a structure would miss a split, and ``DestinationError`` for a non-empty
    folder that is not a previous output of this function (which is replaced).
    """
    started = time.perf_counter()
    out = Path(out)
    structures = _resolve_structures(structures)
    stride = _positive_int("stride", stride)
    margin = _positive_int("margin", margin, minimum=0)
    block = _positive_int("block", block)
    ratios = [float(r) for r in split_ratios]
    if len(ratios) != 3 or any(r < 0 or not math.isfinite(r) for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"split_ratios must be three non-negative numbers (train, val, test), got {split_ratios!r}")
    pattern = block_pattern(ratios, pattern_blocks)

    volumes = load_volumes(templates)
    low, high = intensity_window(volumes.t1, volumes.brain, percentiles)
    rows = _plan(volumes, structures, stride, margin, block, pattern)

    _prepare_output(out)
    for split in SPLITS:
        for sub in (IMAGE_FOLDER, LABEL_FOLDER):
            (out / SPLIT_FOLDERS[split] / sub).mkdir(parents=True, exist_ok=True)
    from medclipseg.io.png import encode_png

    masks = {structure.name: structure_mask(volumes, structure) for structure in structures}
    image_png = {}  # slice -> PNG bytes: one encoding per slice, shared by every structure
    tables = {split: [] for split in SPLITS}
    for row in rows:
        z, split = row["slice"], row["split"]
        if z not in image_png:
            image_png[z] = encode_png(apply_window(axial_slice(volumes.t1, z), low, high))
        name = f"{row['structure']}_z{z:03d}.png"
        row["image"] = name
        folder = out / SPLIT_FOLDERS[split]
        (folder / IMAGE_FOLDER / name).write_bytes(image_png[z])
        label = axial_slice(masks[row["structure"]], z).astype(np.uint8) * 255
        (folder / LABEL_FOLDER / name).write_bytes(encode_png(label, compression=3))
        tables[split].append({"Image": name, "Description": row["prompt"], "Ground Truth": name})
    for split in SPLITS:
        for suffix in TABLE_SUFFIXES:
            write_prompt_table(out / PROMPTS_FOLDER / f"{TABLE_STEMS[split]}{suffix}", tables[split])

    counts = {structure.name: {split: {"present": 0, "absent": 0} for split in SPLITS} for structure in structures}
    for row in rows:
        counts[row["structure"]][row["split"]]["present" if row["present"] else "absent"] += 1
    height, width = axial_slice(volumes.t1, 0).shape
    manifest = {
        "generator": GENERATOR, "version": VERSION, "complete": True,
        "source": {"package": "mricron-data", "templates": str(Path(templates)), "files": volumes.files,
                   "shape": list(volumes.t1.shape), "voxel_mm": list(volumes.voxel_mm),
                   "affine": np.asarray(volumes.affine).round(6).tolist()},
        "orientation": ORIENTATION, "image_size": [int(width), int(height)],
        "window": {"low": low, "high": high, "percentiles": [float(p) for p in percentiles],
                   "of": f"{T1_FILE} voxels inside {BRAIN_FILE} > 0"},
        "structures": {s.name: {"prompt": s.prompt(True), "absent_prompt": s.prompt(False),
                                "atlas_labels": {name: volumes.label_numbers[name] for name in s.atlas_labels},
                                "mask": f"{BRAIN_FILE} > 0" if not s.atlas_labels else f"{ATLAS_FILE} labels"}
                       for s in structures},
        "params": {"stride": stride, "margin": margin, "block": block, "split_ratios": ratios,
                   "pattern": list(pattern)},
        "counts": counts,
        "images": [{key: row[key] for key in ("image", "split", "structure", "slice", "present", "pixels", "block",
                                              "prompt")} for row in rows],
    }
    temporary = out / f".{MANIFEST_FILE}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(temporary, out / MANIFEST_FILE)
    return RealDataResult(root=out, counts=counts, images=len(rows), window=(low, high),
                          manifest_path=out / MANIFEST_FILE, seconds=time.perf_counter() - started)
