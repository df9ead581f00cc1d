"""A second real MRI set: axial slices of the ICBM 2009a template with its grey- and white-matter maps.

The PyPI package ``nilearn`` ships, as package data, the ICBM152 2009a nonlinear symmetric
template (``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``, an average of 152 subjects' T1s)
and its tissue probability maps for grey and white matter, all on one 1 mm grid. Its files are
read where the package keeps them (nilearn itself is never imported). ``write_icbm_slices`` writes
them as the authors' layout exactly as ``medclipseg.datasets.realdata`` writes the Colin27 slices:
RAS-canonical axial slices, radiological display, one intensity window for the volume (of the
voxels with grey or white matter probability above one half), present/absent prompts, and splits
by contiguous blocks of slices. The masks are the probability maps above one half.

Another scanner population and another kind of target (tissue classes rather than nuclei) than
the Colin27 set: the acquisition study uses both.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from medclipseg.datasets.layout import IMAGE_FOLDER, LABEL_FOLDER, PROMPTS_FOLDER, SPLIT_FOLDERS, SPLITS, \
    TABLE_SUFFIXES, write_prompt_table
from medclipseg.datasets.realdata import TABLE_STEMS, apply_window, axial_slice, block_pattern, intensity_window, \
    split_of_slice

GENERATOR = "medclipseg.datasets.icbm"
MANIFEST_FILE = "icbm.json"
T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
TISSUE_FILES = {"grey_matter": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                "white_matter": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}
NOUNS = {"grey_matter": "grey matter", "white_matter": "white matter"}
INSTALL_HINT = "install it with: pip install nilearn (its package data holds the ICBM152 2009a files)"


def templates_dir() -> Optional[Path]:
    """The folder of nilearn's package data holding the ICBM files, or None without the package."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return folder if all((folder / name).is_file() for name in (T1_FILE, *TISSUE_FILES.values())) else None


def prompt(structure: str, present: bool) -> str:
    noun = NOUNS[structure]
    return f"{noun[0].upper()}{noun[1:]} in the brain MRI image." if present else f"No {noun} in the brain MRI image."


def write_icbm_slices(out, *, stride: int = 3, block: int = 3, templates=None) -> dict:
    """Write the slices (every `stride`-th axial slice holding brain) and return the manifest."""
    import nibabel

    from medclipseg.io.png import encode_png

    folder = Path(templates) if templates is not None else templates_dir()
    missing = [name for name in (T1_FILE, *TISSUE_FILES.values()) if folder is None or not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"The ICBM152 2009a files were not found (no {', '.join(missing)} in "
                                f"{folder or 'nilearn'}); {INSTALL_HINT}")
    t1_image = nibabel.as_closest_canonical(nibabel.load(str(folder / T1_FILE)))
    t1 = np.asarray(t1_image.dataobj, dtype=np.float32)
    masks = {}
    for name, file in TISSUE_FILES.items():
        image = nibabel.as_closest_canonical(nibabel.load(str(folder / file)))
        if image.shape != t1.shape or not np.allclose(image.affine, t1_image.affine, atol=1e-4):
            raise ValueError(f"'{file}' is not on the grid of {T1_FILE}.")
        masks[name] = np.asarray(image.dataobj, dtype=np.float32) > 0.5
    brain = masks["grey_matter"] | masks["white_matter"]
    low, high = intensity_window(t1, brain)
    pattern = block_pattern()
    out = Path(out)
    for split in SPLITS:
        for sub in (IMAGE_FOLDER, LABEL_FOLDER):
            (out / SPLIT_FOLDERS[split] / sub).mkdir(parents=True, exist_ok=True)
    occupied = np.flatnonzero(brain.any(axis=(0, 1)))
    tables = {split: [] for split in SPLITS}
    records = []
    for z in range(int(occupied[0]), int(occupied[-1]) + 1, stride):
        split = split_of_slice(z, block, pattern)
        picture = encode_png(apply_window(axial_slice(t1, z), low, high))
        for structure, volume in masks.items():
            label = axial_slice(volume, z)
            name = f"{structure}_z{z:03d}.png"
            (out / SPLIT_FOLDERS[split] / IMAGE_FOLDER / name).write_bytes(picture)
            (out / SPLIT_FOLDERS[split] / LABEL_FOLDER / name).write_bytes(
                encode_png(label.astype(np.uint8) * 255, compression=3))
            text = prompt(structure, bool(label.any()))
            tables[split].append({"Image": name, "Description": text, "Ground Truth": name})
            records.append({"image": name, "split": split, "structure": structure, "slice": z,
                            "present": bool(label.any()), "pixels": int(label.sum()), "prompt": text})
    for split in SPLITS:
        for suffix in TABLE_SUFFIXES:
            write_prompt_table(out / PROMPTS_FOLDER / f"{TABLE_STEMS[split]}{suffix}", tables[split])
    manifest = {"generator": GENERATOR, "source": {"package": "nilearn", "files": [T1_FILE, *TISSUE_FILES.values()]},
                "window": {"low": low, "high": high}, "masks": "tissue probability > 0.5",
                "params": {"stride": stride, "block": block, "pattern": list(pattern)}, "images": records}
    temporary = out / f".{MANIFEST_FILE}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(temporary, out / MANIFEST_FILE)
    return manifest
