"""End-to-end tests of `medclipseg.cli.main` (train, evaluate, predict) on a small dataset."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from app_support import ROOT
from medclipseg.cli import main
from medclipseg.datasets.layout import write_prompt_table

IMAGE_SIDE = 64
SPLIT_COUNTS = {"Train_Folder": 4, "Val_Folder": 2, "Test_Folder": 2}
TABLE_NAMES = {"Train_Folder": "Train_text.csv", "Val_Folder": "Val_text.csv",
               "Test_Folder": "Test_text_original.csv"}


def _circle_pair(index: int):
    """A noisy grey image with a bright disc, and the disc's mask."""
    rng = np.random.RandomState(index)
    centre = (20 + 6 * index % 24, 24 + 4 * index % 20)
    radius = 10 + index % 5
    mask = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.uint8)
    cv2.circle(mask, centre, radius, 255, thickness=-1)
    image = (rng.rand(IMAGE_SIDE, IMAGE_SIDE, 3) * 60).astype(np.uint8)
    image[mask > 0] += 150
    return image, mask


def make_authors_layout(root):
    """4 train, 2 val, 2 test images (64x64, disc masks) with CSV prompt tables."""
    index = 0
    for folder, count in SPLIT_COUNTS.items():
        rows = []
        for _ in range(count):
            name = f"case_{index:02d}.png"
            image, mask = _circle_pair(index)
            for sub, array in (("img", image), ("label", mask)):
                (root / folder / sub).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / folder / sub / name), array)
            rows.append({"Image": name, "Description": "a bright round lesion", "Ground Truth": name})
            index += 1
        write_prompt_table(root / "Prompts_Folder" / TABLE_NAMES[folder], rows)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_authors_layout(tmp_path_factory.mktemp("busi_like"))


TRAIN_ARGS = ["--batch-size", "2", "--seed", "3", "--backbone", "tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained_run(dataset, tmp_path_factory, small_tiny_overrides):
    """One epoch of training with the small tiny backbone (patched in BACKBONES meanwhile)."""
    from medclipseg import registry as build

    def small_tiny_builder(**kwargs):
        kwargs.setdefault("pretrained_text", True)
        return build.build_tiny(**{**small_tiny_overrides, **kwargs})

    patch = pytest.MonkeyPatch()
    patch.setitem(build.BACKBONES, "tiny", small_tiny_builder)
    run = tmp_path_factory.mktemp("run") / "busi"
    try:
        code = main(["train", "--data", str(dataset), "--out", str(run), "--epochs", "1", *TRAIN_ARGS])
        first_state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
        yield {"code": code, "run": run, "first_history": [dict(r) for r in first_state["history"]]}
    finally:
        patch.undo()


def test_train_writes_checkpoints(trained_run):
    run = trained_run["run"]
    assert trained_run["code"] == 0
    assert (run / "last.pt").is_file()
    for folder in ("last", "best"):
        assert (run / folder / "config.json").is_file()
        assert (run / folder / "model.safetensors").is_file()
    config = json.loads((run / "last" / "config.json").read_text())
    assert config["model"]["backbone"] == "tiny"
    assert config["model"]["vision"]["width"] == 64  # the small builder was used
    history = trained_run["first_history"]
    assert len(history) == 1 and history[0]["epoch"] == 1
    assert np.isfinite(history[0]["loss"]) and "val_dice" in history[0]


def test_train_resumes_with_more_epochs(trained_run, dataset, small_tiny_backbone, capsys):
    run = trained_run["run"]
    code = main(["train", "--data", str(dataset), "--out", str(run), "--epochs", "2", *TRAIN_ARGS])
    assert code == 0
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 2
    assert len(state["history"]) == 2
    assert state["history"][0] == trained_run["first_history"][0]
    assert state["history"][1]["epoch"] == 2
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 2
    metadata = json.loads((run / "last" / "config.json").read_text())["metadata"]
    assert metadata["epoch"] == 2


def test_evaluate_writes_results(trained_run, dataset, tmp_path, capsys):
    results_path = tmp_path / "results.json"
    code = main(["evaluate", "--data", str(dataset), "--weights", str(trained_run["run"] / "best"),
                 "--num-samples", "2", "--out", str(results_path), "--device", "cpu"])
    assert code == 0
    results = json.loads(results_path.read_text())
    summary = results["summary"]
    assert summary["images"] == 2
    assert 0.0 <= summary["mean_dsc"] <= 1.0 and 0.0 <= summary["mean_nsd"] <= 1.0
    rows = results["per_image"]
    assert [r["image"] for r in rows] == ["case_06.png", "case_07.png"]
    assert 0.0 <= summary["mean_nsd_authors"] <= 1.0
    for row in rows:
        assert {"dsc", "nsd", "nsd_authors", "prompt", "mean_entropy"} <= set(row)
    assert results["config"]["num_samples"] == 2 and results["config"]["split"] == "test"
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["results"] == str(results_path)


def test_predict_writes_mask_of_input_size(trained_run, tmp_path, capsys):
    image, _ = _circle_pair(11)
    image = cv2.resize(image, (53, 37))
    image_path = tmp_path / "scan.png"
    cv2.imwrite(str(image_path), image)
    out_dir = tmp_path / "out"
    code = main(["predict", "--weights", str(trained_run["run"] / "best"), "--image", str(image_path),
                 "--prompt", "a bright round lesion", "--num-samples", "2", "--seed", "0",
                 "--out-dir", str(out_dir), "--device", "cpu"])
    assert code == 0
    mask = cv2.imread(str(out_dir / "scan_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (37, 53) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    maps = np.load(out_dir / "scan_maps.npz")
    assert maps["probability"].shape == (37, 53)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["num_samples"] == 2 and printed["mask"] == str(out_dir / "scan_mask.png")


def test_predict_bad_image_exit_code(trained_run, tmp_path, capsys):
    bad = tmp_path / "scan.png"
    bad.write_text("not an image")
    code = main(["predict", "--weights", str(trained_run["run"] / "best"), "--image", str(bad),
                 "--prompt", "a lesion", "--num-samples", "1", "--out-dir", str(tmp_path), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "medclipseg predict: error:" in err and "not a recognised image" in err


def test_predict_empty_prompt_exit_code(trained_run, tmp_path, capsys):
    image_path = tmp_path / "scan.png"
    cv2.imwrite(str(image_path), _circle_pair(3)[0])
    code = main(["predict", "--weights", str(trained_run["run"] / "best"), "--image", str(image_path),
                 "--prompt", "  ", "--num-samples", "1", "--out-dir", str(tmp_path), "--device", "cpu"])
    assert code == 2
    assert "Prompt is empty" in capsys.readouterr().err


def test_missing_weights_exit_code(tmp_path, capsys):
    image_path = tmp_path / "scan.png"
    cv2.imwrite(str(image_path), _circle_pair(3)[0])
    code = main(["predict", "--weights", str(tmp_path / "no_such_model"), "--image", str(image_path),
                 "--prompt", "a lesion", "--device", "cpu"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_without_prompts_folder_exit_code(tmp_path, small_tiny_backbone, capsys):
    broken = make_authors_layout(tmp_path / "broken")
    for table in (broken / "Prompts_Folder").iterdir():
        table.unlink()
    (broken / "Prompts_Folder").rmdir()
    code = main(["train", "--data", str(broken), "--out", str(tmp_path / "run"), "--epochs", "1", *TRAIN_ARGS])
    assert code == 2
    err = capsys.readouterr().err
    assert "medclipseg train: error:" in err and "Prompts_Folder" in err


def test_evaluate_missing_test_table_exit_code(trained_run, tmp_path, capsys):
    broken = make_authors_layout(tmp_path / "broken")
    (broken / "Prompts_Folder" / "Test_text_original.csv").unlink()
    code = main(["evaluate", "--data", str(broken), "--weights", str(trained_run["run"] / "best"),
                 "--num-samples", "1", "--out", str(tmp_path / "r.json"), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Test_text_original" in err and not (tmp_path / "r.json").exists()


def test_building_the_parser_does_not_import_torch():
    # A fresh interpreter: this test module has imported torch already.
    code = ("import medclipseg.cli, sys; medclipseg.cli.build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(ROOT), timeout=120)


# -- predict on volumes -------------------------------------------------------------------------


def _t1_block(depth: int = 6):
    """A 40 x 44 x depth block of the real T1 (skips without mricron-data), its affine moved to match."""
    from medclipseg.io.volumes import ScanVolume
    from volume_support import real_t1

    t1 = real_t1(crop=True)
    start = np.array([12, 14, 14])
    affine = t1.affine.copy()
    affine[:3, 3] = t1.affine[:3, :3] @ start + t1.affine[:3, 3]
    array = np.ascontiguousarray(t1.array[12:52, 14:58, 14:14 + depth])
    return ScanVolume(array=array, affine=affine, modality="MR", name="t1 block")


def _predict_volume_args(weights, image, out_dir, *extra):
    return ["predict", "--weights", str(weights), "--image", str(image), "--prompt", "Brain in the brain MRI image.",
            "--num-samples", "2", "--seed", "0", "--out-dir", str(out_dir), "--device", "cpu", *extra]


def test_predict_nifti_writes_masks_on_the_file_grid(trained_run, tmp_path, capsys):
    import nibabel as nib

    block = _t1_block()
    # stored L-P-S with axes permuted, so "the file's own grid" is not RAS
    ornt = np.array([[1, -1], [0, -1], [2, 1]])
    array = nib.orientations.apply_orientation(block.array, ornt)
    affine = block.affine @ nib.orientations.inv_ornt_aff(ornt, block.shape)
    scan = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array), affine), scan)
    out_dir = tmp_path / "out"
    code = main(_predict_volume_args(trained_run["run"] / "best", scan, out_dir))
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["mask"] == str(out_dir / "head_mask.nii.gz")
    assert printed["probability"] == str(out_dir / "head_probability.nii.gz")
    assert printed["entropy"] == str(out_dir / "head_entropy.nii.gz")
    assert printed["shape"] == [44, 40, 6] and printed["slice_plane"] == "axial"
    assert 0 <= printed["start_slice"] < 6 and printed["num_samples"] == 2 and printed["seconds"] > 0
    assert {"band_entropy", "mean_entropy", "foreground_fraction", "expected_dice"} <= set(printed["scores"])
    assert sorted(p.name for p in out_dir.iterdir()) == ["head_entropy.nii.gz", "head_mask.nii.gz",
                                                          "head_probability.nii.gz"]
    mask_image = nib.load(out_dir / "head_mask.nii.gz")
    assert mask_image.shape == array.shape and mask_image.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask_image.affine, affine, atol=1e-5)
    assert "".join(nib.aff2axcodes(mask_image.affine)) == "PLS"
    mask = np.asarray(mask_image.dataobj)
    assert set(np.unique(mask)) <= {0, 1}
    probability = nib.load(out_dir / "head_probability.nii.gz")
    entropy = nib.load(out_dir / "head_entropy.nii.gz")
    for image in (probability, entropy):
        assert image.shape == array.shape and image.get_data_dtype() == np.float32
        np.testing.assert_allclose(image.affine, affine, atol=1e-5)
    values = np.asarray(probability.dataobj)
    np.testing.assert_array_equal(mask, (values > 0.5).astype(np.uint8))
    assert np.all((values >= 0) & (values <= 1))
    assert np.all((np.asarray(entropy.dataobj) >= 0) & (np.asarray(entropy.dataobj) <= np.float16(np.log(2))))


def test_predict_dicom_zip_writes_the_mask_on_the_series_grid(trained_run, tmp_path, capsys):
    import nibabel as nib

    from medclipseg.io.dicom_series import read_dicom_volume
    from volume_support import write_dicom_series, zip_folder

    write_dicom_series(_t1_block(), tmp_path / "series")
    archive = zip_folder(tmp_path / "series", tmp_path / "t1 series.zip")
    series = read_dicom_volume(archive)
    out_dir = tmp_path / "out"
    assert main(_predict_volume_args(trained_run["run"] / "best", archive, out_dir)) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["mask"] == str(out_dir / "t1 series_mask.nii.gz")
    mask_image = nib.load(printed["mask"])
    assert mask_image.shape == series.shape == (40, 44, 6)
    np.testing.assert_allclose(mask_image.affine, series.affine, atol=1e-4)
    assert printed["shape"] == list(series.shape)


def test_predict_several_series_are_refused_in_words_unless_one_is_picked(trained_run, tmp_path, capsys):
    import nibabel as nib
    from pydicom.uid import generate_uid

    from medclipseg.io.dicom_series import list_dicom_series
    from volume_support import write_dicom_series, write_localizer, zip_folder

    study = generate_uid()
    write_dicom_series(_t1_block(depth=4), tmp_path / "study" / "t1", study_uid=study)
    write_localizer(tmp_path / "study" / "localizer", study)
    archive = zip_folder(tmp_path / "study", tmp_path / "study.zip")
    out_dir = tmp_path / "out"
    code = main(_predict_volume_args(trained_run["run"] / "best", archive, out_dir))
    assert code == 2
    err = capsys.readouterr().err
    assert "medclipseg predict: error:" in err and "holds 2 series" in err and "never merged" in err
    assert not out_dir.exists()
    index = next(info.index for info in list_dicom_series(archive) if info.slices == 4)
    assert main(_predict_volume_args(trained_run["run"] / "best", archive, out_dir, "--series", str(index))) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["mask"] == str(out_dir / f"study_series{index}_mask.nii.gz")
    assert nib.load(printed["mask"]).shape == (40, 44, 4)


def test_predict_truncated_nifti_is_refused_and_nothing_is_written(trained_run, tmp_path, capsys):
    import gzip

    import nibabel as nib

    block = _t1_block()
    whole = tmp_path / "whole.nii"
    nib.save(nib.Nifti1Image(block.array, block.affine), whole)
    truncated = tmp_path / "scan.nii.gz"
    truncated.write_bytes(gzip.compress(whole.read_bytes()[: 352 + 1000]))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = main(_predict_volume_args(trained_run["run"] / "best", truncated, out_dir))
    assert code == 2
    captured = capsys.readouterr()
    assert "medclipseg predict: error:" in captured.err and "truncated" in captured.err
    assert captured.out == "" and list(out_dir.iterdir()) == []


@pytest.mark.parametrize("extra, words", [
    (["--window", "Lung"], "Window presets are in Hounsfield units and apply to CT"),
    (["--window", "40,0"], "width positive"),
    (["--window", "40,50,60"], "--window is a CT preset name or CENTER,WIDTH"),
    (["--series", "1"], "--series picks one series of a DICOM folder or zip"),
    (["--threshold", "1"], "--threshold must lie strictly between 0 and 1"),
    (["--num-samples", "0"], "--num-samples must be at least 1"),
])
def test_predict_volume_bad_options_exit_code(tmp_path, capsys, extra, words):
    import nibabel as nib

    block = _t1_block(depth=3)
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(block.array, block.affine), scan)
    out_dir = tmp_path / "out"
    # a model that does not exist: the options are refused before any model is loaded
    code = main(_predict_volume_args(tmp_path / "no_such_model", scan, out_dir, *extra))
    assert code == 2
    assert words in capsys.readouterr().err
    assert not out_dir.exists()


def test_predict_volume_options_are_refused_for_images(tmp_path, capsys):
    image_path = tmp_path / "scan.png"
    cv2.imwrite(str(image_path), _circle_pair(3)[0])
    code = main(["predict", "--weights", str(tmp_path / "no_such_model"), "--image", str(image_path),
                 "--prompt", "a lesion", "--window", "Lung", "--out-dir", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 2
    assert "--window applies to volumes" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
