"""`medclipseg.datasets.icbm`: the ICBM152 2009a slices with grey/white matter masks (nilearn's package data)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from medclipseg.datasets.icbm import GENERATOR, MANIFEST_FILE, T1_FILE, TISSUE_FILES, templates_dir, \
    write_icbm_slices
from medclipseg.datasets.layout import load_split
from medclipseg.io.masks import read_mask

pytestmark = pytest.mark.skipif(templates_dir() is None, reason="nilearn (its ICBM152 files) is not installed")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("icbm")
    return out, write_icbm_slices(out, stride=9)


def test_masks_are_the_tissue_maps_above_one_half_in_radiological_view(written):
    import nibabel

    out, manifest = written
    record = next(r for r in manifest["images"] if r["structure"] == "white_matter" and r["present"])
    volume = nibabel.load(str(templates_dir() / TISSUE_FILES["white_matter"]))
    assert nibabel.aff2axcodes(volume.affine) == ("R", "A", "S")  # stored RAS: canonical is the identity here
    data = np.asarray(volume.dataobj) > 0.5
    x_size, y_size = data.shape[:2]
    z = record["slice"]
    # Radiological axial view written out by hand: row r, column c shows voxel (X-1-c, Y-1-r, z).
    expected = np.array([[data[x_size - 1 - c, y_size - 1 - r, z] for c in range(x_size)] for r in range(y_size)])
    samples = {s.image_name: s for split in ("train", "val", "test") for s in load_split(out, split)}
    sample = samples[record["image"]]
    np.testing.assert_array_equal(read_mask(open(sample.mask_path, "rb").read()) > 0, expected)
    assert sample.prompt == "White matter in the brain MRI image."
    assert record["pixels"] == int(expected.sum())


def test_every_slice_is_in_one_split_and_prompts_follow_presence(written):
    out, manifest = written
    split_of = {}
    for record in manifest["images"]:
        assert split_of.setdefault(record["slice"], record["split"]) == record["split"]
        assert record["prompt"].startswith("No ") == (not record["present"])
    assert {r["split"] for r in manifest["images"]} == {"train", "val", "test"}
    saved = json.loads((out / MANIFEST_FILE).read_text())
    assert saved["generator"] == GENERATOR and len(saved["images"]) == len(manifest["images"])
    assert T1_FILE in saved["source"]["files"]


def test_missing_files_are_refused_in_words(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install nilearn"):
        write_icbm_slices(tmp_path / "out", templates=tmp_path)
