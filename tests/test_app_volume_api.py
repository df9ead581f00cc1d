"""The app's named endpoints with volumes, through gradio_client against a live `python app.py`.

A real T1 (Debian's mricron-data, cropped) as NIfTI and as a DICOM series zip goes through /segment,
/next_case, /save_correction and /export; every mask that comes back is checked with nibabel on the
scan's own grid and affine, and every refusal is in words with nothing written.
"""
from __future__ import annotations

import gzip
import json
import sqlite3
import zipfile

import nibabel as nib
import numpy as np
import pytest

from app_support import app_server
from volume_support import real_t1, write_dicom_series, write_localizer, zip_folder

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

PROMPT = "Brain tissue in the T1 MRI."


def count(db_path, table: str) -> int:
    with sqlite3.connect(db_path) as connection:
        return connection.execute(f"select count(*) from {table}").fetchone()[0]


def save_nifti(volume, values, path, dtype=np.float32):
    image = nib.Nifti1Image(np.asarray(values, dtype=dtype), volume.affine)
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    nib.save(image, str(path))
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    folder = tmp_path_factory.mktemp("volume-api")
    db_path = folder / "db" / "annotations.db"
    with app_server(db_path) as (url, _process):
        yield Client(url, verbose=False), db_path, folder


@pytest.fixture(scope="module")
def t1_file(live):
    _, _, folder = live
    volume = real_t1(crop=True)
    return volume, save_nifti(volume, volume.array, folder / "t1.nii.gz")


def test_segment_a_nifti_answers_masks_on_its_grid(live, t1_file):
    client, db_path, _ = live
    volume, path = t1_file
    before = count(db_path, "cases")
    summary, mask_path, probability_path = client.predict(handle_file(str(path)), PROMPT, 2, 0.5, "", False,
                                                          api_name="/segment")
    assert summary["kind"] == "volume" and summary["shape"] == list(volume.shape)
    assert summary["case_id"] is None and count(db_path, "cases") == before  # not asked to queue it
    assert 0 <= summary["start_slice"] < summary["shape"][2]
    mask = nib.load(mask_path)
    probability = nib.load(probability_path)
    assert mask.shape == volume.shape and np.allclose(mask.affine, volume.affine)
    assert np.allclose(probability.affine, volume.affine)
    values = np.asarray(mask.dataobj)
    assert set(np.unique(values)) <= {0, 1}
    # The mask is the thresholded probability, voxel for voxel, on the file's own grid.
    assert np.array_equal(values > 0, np.asarray(probability.dataobj) > 0.5)


def test_segment_a_dicom_zip_answers_a_mask_on_the_series_grid(live, tmp_path):
    client, _, _ = live
    volume = real_t1(crop=True)
    study = tmp_path / "study"
    write_dicom_series(volume, study / "series")
    archive = zip_folder(study, tmp_path / "series.zip")
    summary, mask_path, _ = client.predict(handle_file(str(archive)), PROMPT, 2, 0.5, "", False,
                                           api_name="/segment")
    mask = nib.load(mask_path)
    assert summary["kind"] == "volume" and mask.shape == tuple(summary["shape"])
    assert np.allclose(mask.affine, np.asarray(summary["affine"]))
    # The series holds the T1's voxels: its grid covers the same points of the patient.
    corners = np.array([[0, 0, 0], [s - 1 for s in mask.shape]])
    world = nib.affines.apply_affine(mask.affine, corners)
    expected = nib.affines.apply_affine(volume.affine, np.array([[0, 0, 0], [s - 1 for s in volume.shape]]))
    assert np.allclose(np.sort(world, axis=0), np.sort(expected, axis=0), atol=1e-3)


def test_refusals_are_in_words_and_write_nothing(live, tmp_path):
    client, db_path, _ = live
    volume = real_t1(crop=True)
    before = (count(db_path, "cases"), count(db_path, "predictions"))
    truncated = tmp_path / "truncated.nii.gz"
    whole = save_nifti(volume, volume.array, tmp_path / "whole.nii.gz").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 6, 3), np.float32), np.eye(4)), str(four_d))
    study = tmp_path / "two"
    paths = write_dicom_series(volume, study / "t1")
    import pydicom

    write_localizer(study / "localizer", pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    gap = tmp_path / "gap"
    gap_paths = write_dicom_series(volume, gap / "t1")
    positions = sorted(gap_paths, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                                        .ImagePositionPatient[2]))
    positions[len(positions) // 2].unlink()  # a slice missing in the middle
    cases = [(truncated, "truncated"), (four_d, "4-D"),
             (zip_folder(gap, tmp_path / "gap.zip"), "missing")]
    for path, words in cases:
        with pytest.raises(Exception) as error:
            client.predict(handle_file(str(path)), PROMPT, 2, 0.5, "api-user", True, api_name="/segment")
        assert words in str(error.value), str(error.value)
    # Two series in one zip: the endpoint segments one scan; it names both instead of picking one.
    with pytest.raises(Exception) as error:
        client.predict(handle_file(str(zip_folder(study, tmp_path / "two.zip"))), PROMPT, 2, 0.5, "api-user", True,
                       api_name="/segment")
    assert "series" in str(error.value).lower()
    assert (count(db_path, "cases"), count(db_path, "predictions")) == before


def test_next_case_save_correction_and_nifti_export_round_trip(live, t1_file, tmp_path):
    client, db_path, _ = live
    volume, path = t1_file
    summary, _, _ = client.predict(handle_file(str(path)), PROMPT, 2, 0.5, "vera", True, api_name="/segment")
    case_id = summary["case_id"]
    assert case_id is not None
    served, image_path = client.predict("vera", "band_entropy", api_name="/next_case")
    assert served["kind"] == "volume" and served["case_id"] == case_id
    assert served["shape"] == list(volume.shape) and 0 <= served["start_slice"] < served["slices"]
    image = nib.load(image_path)
    assert image.shape == volume.shape and np.allclose(image.affine, volume.affine)
    assert np.allclose(np.asarray(image.dataobj), volume.array)  # modality units, own grid

    # A mask on another grid or with another affine is refused, nothing written.
    versions_before = count(db_path, "corrections")
    wrong_shape = save_nifti(volume, np.zeros(volume.shape[:2] + (volume.shape[2] - 1,)), tmp_path / "a.nii.gz",
                             np.uint8)
    shifted = nib.Nifti1Image(np.zeros(volume.shape, np.uint8), volume.affine @ np.diag([1, 1, 1, 1.0]))
    shifted_affine = volume.affine.copy()
    shifted_affine[0, 3] += 5.0
    shifted.set_sform(shifted_affine, code=1)
    shifted.set_qform(shifted_affine, code=1)
    nib.save(shifted, str(tmp_path / "b.nii.gz"))
    png = tmp_path / "mask.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    for bad, words in ((wrong_shape, "shape"), (tmp_path / "b.nii.gz", "affine"), (png, ".nii.gz")):
        with pytest.raises(Exception) as error:
            client.predict(case_id, handle_file(str(bad)), "vera", "corrected", api_name="/save_correction")
        assert words in str(error.value), str(error.value)
    assert count(db_path, "corrections") == versions_before

    # A box painted on three axial slices (k = 20..22 on this RAS grid), sent on the served grid.
    painted = np.zeros(volume.shape, np.uint8)
    painted[10:40, 20:50, 20:23] = 1
    mask_path = save_nifti(volume, painted, tmp_path / "painted.nii.gz", np.uint8)
    saved = client.predict(case_id, handle_file(str(mask_path)), "vera", "corrected", None,
                           served["latest_version"], [20, 21, 22], api_name="/save_correction")
    assert saved["version"] == 1 and saved["status"] == "corrected"
    with sqlite3.connect(db_path) as connection:
        reviewed = connection.execute("select reviewed_slices from corrections where case_id = ?",
                                      (case_id,)).fetchone()[0]
    assert json.loads(reviewed) == [20, 21, 22]

    archive_path, info = client.predict(0.0, 0.0, 0, "nifti", api_name="/export")
    with zipfile.ZipFile(archive_path) as archive:
        names = archive.namelist()
        manifest_name = next(n for n in names if n.endswith("manifest.json"))
        root = manifest_name.rsplit("/", 1)[0]
        manifest = json.loads(archive.read(manifest_name))
        entry = next(e for e in manifest["cases"] if e["case_id"] == case_id)
        exported = nib.Nifti1Image.from_bytes(gzip.decompress(archive.read(f"{root}/{entry['files']['mask']}")))
        exported_image = nib.Nifti1Image.from_bytes(
            gzip.decompress(archive.read(f"{root}/{entry['files']['image']}")))
    assert np.array_equal(np.asarray(exported.dataobj), painted)
    assert np.allclose(exported.affine, volume.affine) and np.allclose(exported_image.affine, volume.affine)
    assert len(entry["slices"]) == 3  # the reviewed slices, in the authors' 2-D layout
    with pytest.raises(Exception) as error:
        client.predict(0.0, 0.0, 0, "stl", api_name="/export")
    assert "volume format" in str(error.value)
