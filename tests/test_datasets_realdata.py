"""Real MRI slices from Debian's mricron-data: masks, window, orientation, layout, split, guards."""
from __future__ import annotations

import importlib.util
import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from medclipseg.datasets import realdata
from medclipseg.datasets.layout import SPLITS, load_split
from medclipseg.datasets.splits import DestinationError
from medclipseg.io.masks import read_mask
from medclipseg.io.png import decode_png

TEMPLATES = realdata.DEFAULT_TEMPLATES_DIR
needs_templates = pytest.mark.skipif(
    not realdata.templates_available(TEMPLATES) or importlib.util.find_spec("nibabel") is None,
    reason=f"needs the Debian package mricron-data ({TEMPLATES}; apt-get install mricron-data) and nibabel")
# The AAL numbers as aal.nii.txt lists them, written out here so that the module's lookup by name is checked.
AAL_NUMBERS = {"caudate": (71, 72), "putamen": (73, 74), "thalamus": (77, 78), "hippocampus": (37, 38)}
PUTAMEN_LEFT = 73


@pytest.fixture(scope="module")
def nifti():
    nibabel = pytest.importorskip("nibabel")
    if not realdata.templates_available(TEMPLATES):
        pytest.skip("the Debian package mricron-data is not installed; apt-get install mricron-data")
    volumes = {}
    for name in ("ch2", "ch2bet", "aal"):
        image = nibabel.load(str(TEMPLATES / f"{name}.nii.gz"))  # as stored, not reoriented
        volumes[name] = (np.asarray(image.dataobj), image.affine)
    return volumes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, nifti):
    out = tmp_path_factory.mktemp("realdata") / "data"
    result = realdata.write_realdata(out)
    manifest = json.loads((out / realdata.MANIFEST_FILE).read_text(encoding="utf-8"))
    return out, result, manifest


def _files(out, record):
    folder = out / {"train": "Train_Folder", "val": "Val_Folder", "test": "Test_Folder"}[record["split"]]
    return folder / "img" / record["image"], folder / "label" / record["image"]


def _expected_slice(volume, affine, k):
    """Axial slice k resampled through the affine: rows run from anterior to posterior, columns
    from the subject's right to left (radiological), one voxel per millimetre."""
    shape = np.array(volume.shape)
    corners = np.array([[i, j, kk, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for kk in (0, k)]).T
    world = affine @ corners
    x_right, y_front = world[0].max(), world[1].max()
    z_world = (affine @ np.array([0, 0, k, 1]))[2]
    width = int(round(world[0].max() - world[0].min())) + 1
    height = int(round(world[1].max() - world[1].min())) + 1
    rows, cols = np.mgrid[0:height, 0:width]
    points = np.stack([x_right - cols, y_front - rows, np.full(rows.shape, z_world), np.ones(rows.shape)])
    index = np.rint(np.einsum("ij,jhw->ihw", np.linalg.inv(affine), points)).astype(int)
    return volume[index[0], index[1], index[2]]


def _truth(nifti, structure, k):
    if structure == "brain":
        data, affine = nifti["ch2bet"]
        return _expected_slice(data, affine, k) > 0
    data, affine = nifti["aal"]
    return np.isin(_expected_slice(data, affine, k), AAL_NUMBERS[structure])


@needs_templates
def test_masks_equal_the_atlas_and_brain_extraction(dataset, nifti):
    out, _, manifest = dataset
    records = manifest["images"]
    picked = [r for r in records if r["present"]][::25] + [r for r in records if not r["present"]][::20]
    assert {r["structure"] for r in picked} >= set(realdata.DEFAULT_STRUCTURES) - {"thalamus"}
    for record in picked:
        _, label_path = _files(out, record)
        mask = read_mask(label_path)
        truth = _truth(nifti, record["structure"], record["slice"])
        assert mask.shape == truth.shape == (217, 181)
        np.testing.assert_array_equal(mask, truth, err_msg=record["image"])
        assert record["pixels"] == int(truth.sum())


@needs_templates
def test_orientation_anterior_up_and_radiological(dataset, nifti):
    out, _, manifest = dataset
    record = max((r for r in manifest["images"] if r["structure"] == "putamen"), key=lambda r: r["pixels"])
    aal, affine = nifti["aal"]
    left = _expected_slice(aal, affine, record["slice"]) == PUTAMEN_LEFT
    columns = np.nonzero(left)[1]
    # The left putamen (world x < 0) lies on the image's right half in the radiological convention,
    # and there the written mask holds exactly it.
    assert columns.min() > left.shape[1] // 2
    written = read_mask(_files(out, record)[1])
    half = left.shape[1] // 2
    np.testing.assert_array_equal(written[:, half:], left[:, half:])
    # Anterior up: the caudate's head lies above the thalamus on the slice where both are largest.
    both = [r["slice"] for r in manifest["images"] if r["structure"] in ("caudate", "thalamus") and r["present"]]
    z = Counter(both).most_common(1)[0][0]
    caudate_rows = np.nonzero(_truth(nifti, "caudate", z))[0]
    thalamus_rows = np.nonzero(_truth(nifti, "thalamus", z))[0]
    assert caudate_rows.mean() < thalamus_rows.mean()
    assert "radiological" in manifest["orientation"] and "anterior at the top" in manifest["orientation"]


@needs_templates
def test_one_window_for_the_whole_volume(dataset, nifti):
    out, result, manifest = dataset
    t1, affine = nifti["ch2"]
    brain = nifti["ch2bet"][0] > 0
    low, high = np.percentile(t1[brain].astype(np.float64), [0.5, 99.5])
    assert result.window == pytest.approx((low, high))
    assert manifest["window"]["low"] == pytest.approx(low) and manifest["window"]["high"] == pytest.approx(high)
    expected = {}
    for record in manifest["images"]:
        k = record["slice"]
        if k not in expected:
            values = _expected_slice(t1, affine, k).astype(np.float64)
            expected[k] = np.clip(np.rint((values - low) / (high - low) * 255), 0, 255).astype(np.uint8)
        image_path, _ = _files(out, record)
        image = decode_png(image_path.read_bytes(), grey=True)
        np.testing.assert_array_equal(image, expected[k], err_msg=record["image"])
    assert len(expected) > 100  # many slices, all through the same window


@needs_templates
def test_load_split_reads_every_split_with_the_manifest_rows(dataset):
    out, result, manifest = dataset
    by_name = {r["image"]: r for r in manifest["images"]}
    assert len(by_name) == len(manifest["images"]) == result.images
    seen = set()
    for split in SPLITS:
        samples = load_split(out, split)
        assert samples, split
        for sample in samples:
            record = by_name[sample.image_name]
            assert record["split"] == split and sample.prompt == record["prompt"]
            seen.add(sample.image_name)
        for suffix in (".xlsx", ".csv"):
            assert (out / "Prompts_Folder" / f"{ {'train': 'Train', 'val': 'Val', 'test': 'Test'}[split]}_text{suffix}"
                    ).is_file()
    assert seen == set(by_name)
    counted = defaultdict(Counter)
    for record in manifest["images"]:
        counted[record["structure"]][(record["split"], record["present"])] += 1
    for structure, per_split in result.counts.items():
        for split in SPLITS:
            assert per_split[split]["present"] == counted[structure][(split, True)]
            assert per_split[split]["absent"] == counted[structure][(split, False)]
    assert 200 <= result.images <= 600  # small enough for CPU study loops


@needs_templates
def test_prompts_fit_and_absent_slices_are_empty(dataset):
    from medclipseg.phantoms.prompts import count_tokens

    out, _, manifest = dataset
    for record in manifest["images"]:
        assert count_tokens(record["prompt"]) <= 32, record["prompt"]
        noun = realdata.STRUCTURES[record["structure"]].noun
        mask = read_mask(_files(out, record)[1])
        if record["present"]:
            assert mask.any() and record["prompt"].lower().startswith(noun)
            assert record["prompt"].endswith(" in the brain MRI image.")
        else:
            assert not mask.any() and record["pixels"] == 0
            assert record["prompt"] == f"No {noun} in the brain MRI image."
    for structure in realdata.DEFAULT_STRUCTURES:
        rows = [r for r in manifest["images"] if r["structure"] == structure]
        present = sorted(r["slice"] for r in rows if r["present"])
        absent = [r["slice"] for r in rows if not r["present"]]
        assert 0 < len(absent) < len(present), structure
        # absent slices lie within the margin (8 slices) above and below the structure's extent
        assert all(present[0] - 8 <= z < present[0] or present[-1] < z <= present[-1] + 8 for z in absent)
        assert present == list(range(present[0], present[-1] + 1))  # every slice of the extent


@needs_templates
def test_split_by_contiguous_blocks_with_every_structure_in_every_split(dataset):
    _, _, manifest = dataset
    split_of_slice = {}
    for record in manifest["images"]:
        assert split_of_slice.setdefault(record["slice"], record["split"]) == record["split"]  # one image, one split
    block = manifest["params"]["block"]
    for z, split in split_of_slice.items():
        start = z - z % block
        assert all(split_of_slice.get(other, split) == split for other in range(start, start + block))
    # runs of one split are whole blocks: a change of split happens only at a block boundary
    ordered = sorted(split_of_slice)
    for before, after in zip(ordered, ordered[1:]):
        if split_of_slice[before] != split_of_slice[after]:
            assert after % block == 0 and after == before + 1
    for structure in realdata.DEFAULT_STRUCTURES:
        splits = {r["split"] for r in manifest["images"] if r["structure"] == structure and r["present"]}
        assert splits == set(SPLITS), structure
    shares = Counter(split_of_slice[z] for z in split_of_slice)
    total = sum(shares.values())
    assert 0.5 < shares["train"] / total < 0.7 and 0.05 < shares["val"] / total < 0.2
    assert 0.2 < shares["test"] / total < 0.4


def test_block_pattern_deals_the_ratios_evenly():
    pattern = realdata.block_pattern((0.6, 0.1, 0.3), 7)
    assert Counter(pattern) == {"train": 4, "val": 1, "test": 2}
    assert all(a != b for a, b in zip(pattern, pattern[1:]) if "train" not in (a, b))  # val/test never adjacent
    assert Counter(realdata.block_pattern((0.6, 0.1, 0.3), 10)) == {"train": 6, "val": 1, "test": 3}
    assert set(realdata.block_pattern((1, 0, 0), 5)) == {"train"}
    assert realdata.split_of_slice(0, 3, pattern) == pattern[0]
    assert realdata.split_of_slice(3 * 7 + 4, 3, pattern) == pattern[1]


@needs_templates
def test_deterministic_and_a_previous_output_is_replaced(tmp_path, dataset):
    _, _, manifest = dataset
    out = tmp_path / "again"
    first = realdata.write_realdata(out, stride=3)
    again = realdata.write_realdata(out, stride=1)
    assert first.images < again.images
    rewritten = json.loads((out / realdata.MANIFEST_FILE).read_text(encoding="utf-8"))
    assert rewritten["images"] == manifest["images"]
    assert rewritten["window"] == manifest["window"]


@needs_templates
def test_refuses_a_foreign_folder(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DestinationError, match="not a previous realdata output"):
        realdata.write_realdata(foreign, stride=4)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


@needs_templates
def test_a_structure_that_would_miss_a_split_is_refused_before_writing(tmp_path):
    out = tmp_path / "big-blocks"
    with pytest.raises(ValueError, match="has no slice in the"):
        realdata.write_realdata(out, block=12)
    assert not out.exists()


def test_missing_templates_explain_how_to_install(tmp_path):
    empty = tmp_path / "templates"
    empty.mkdir()
    assert not realdata.templates_available(empty)
    with pytest.raises(realdata.TemplatesMissingError, match="apt-get install mricron-data"):
        realdata.write_realdata(tmp_path / "out", templates=empty)
    assert not (tmp_path / "out").exists()


def test_cli_reports_missing_templates(tmp_path, capsys):
    from medclipseg.cli import main

    assert main(["realdata", "--out", str(tmp_path / "out"), "--templates", str(tmp_path)]) == 2
    assert "apt-get install mricron-data" in capsys.readouterr().err


@needs_templates
def test_cli_writes_a_subset(tmp_path, capsys):
    from medclipseg.cli import main

    out = tmp_path / "cli"
    assert main(["realdata", "--out", str(out), "--structures", "putamen,thalamus", "--stride", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["counts"]) == {"putamen", "thalamus"}
    assert summary["images"] == sum(len(load_split(out, split)) for split in SPLITS)
    assert all(r["slice"] % 2 == 0 for r in realdata.read_manifest(out)["images"])


def test_the_command_line_loads_neither_torch_nor_nibabel_until_run():
    import subprocess
    import sys

    code = ("import sys, medclipseg.cli as cli; cli.build_parser(); import medclipseg.datasets.realdata; "
            "assert 'torch' not in sys.modules and 'nibabel' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
