"""DICOM series -> ScanVolume on real data: the MRIcron T1 written as a series, and pydicom's own test files."""
from __future__ import annotations

import io
import json
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from medclipseg.io import dicom_series
from medclipseg.io.dicom_series import (
    deidentified_header,
    headers_from_json,
    headers_to_json,
    list_dicom_series,
    read_dicom_volume,
    read_dicom_volumes,
)
from medclipseg.io.volumes import ScanVolume, VolumeReadError, read_volume
from volume_support import IDENTIFYING_VALUES, real_t1, write_dicom_series, write_localizer, zip_folder

DICOMDIR_TESTS = Path(pydicom.data.get_testdata_file("DICOMDIR")).parent  # pydicom's dicomdirtests folder


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    # pydicom warns about value formats in its own test files; those are not what is tested here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.fixture(scope="module")
def t1() -> ScanVolume:
    return real_t1()


@pytest.fixture(scope="module")
def series(tmp_path_factory, t1) -> Path:
    """The cropped T1 as an MR series: shuffled file names, instance numbers against the position."""
    folder = tmp_path_factory.mktemp("t1_series")
    write_dicom_series(t1, folder)
    return folder


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def _files_by_position(folder: Path) -> list:
    """The series' files sorted by z (the T1's slices are axial)."""
    paths = list(folder.iterdir())
    return sorted(paths, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def _canonical(array: np.ndarray, affine: np.ndarray):
    import nibabel as nib

    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine))
    return np.asarray(image.dataobj), image.affine


# -- the volume and its geometry ------------------------------------------------------------------
def test_series_reads_back_the_nifti_voxel_for_voxel(series, t1):
    volume = read_dicom_volume(series)
    assert volume.shape == t1.shape == (64, 72, 40)
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, t1.array)
    assert np.allclose(volume.affine, t1.affine, atol=1e-4)
    assert volume.modality == "MR" and volume.source_format == "dicom"
    assert volume.name == "MR series, 40 slices"
    assert volume.frame_numbers is None and len(volume.dicom_headers) == 40
    # dicom_headers follow k: slice k's header holds slice k's position.
    for k in (0, 17, 39):
        position = np.array([float(v) for v in volume.dicom_headers[k].ImagePositionPatient])
        expected = np.diag([-1, -1, 1]) @ (t1.affine[:3, :3] @ [0, 0, k] + t1.affine[:3, 3])
        assert np.allclose(position, expected, atol=1e-4)
    assert any("sorted by position" in note for note in volume.conversions)


def test_file_names_and_instance_numbers_do_not_decide_the_order(series, t1, tmp_path):
    plain = tmp_path / "plain"
    write_dicom_series(t1, plain, shuffle_names=False, reverse_instance_numbers=False)
    from_plain = read_dicom_volume(plain)
    shuffled_list = sorted(series.iterdir(), key=lambda p: p.name)  # hash names: an order unrelated to z
    from_list = read_dicom_volume(shuffled_list)
    for volume in (from_plain, from_list):
        np.testing.assert_array_equal(volume.array, t1.array)
        assert np.allclose(volume.affine, t1.affine, atol=1e-4)


def test_geometry_agrees_with_highdicom(series):
    import highdicom

    ours = read_dicom_volume(series)
    theirs = highdicom.get_volume_from_series([pydicom.dcmread(p) for p in series.iterdir()], dtype=np.float32)
    reference = theirs.to_nibabel()
    our_values, our_affine = _canonical(ours.array, ours.affine)
    their_values, their_affine = _canonical(np.asarray(reference.dataobj), reference.affine)
    np.testing.assert_array_equal(our_values, their_values)
    assert np.allclose(our_affine, their_affine, atol=1e-4)


def test_real_ct_series_in_hounsfield_units_agrees_with_highdicom():
    import highdicom

    folder = DICOMDIR_TESTS / "98892001" / "CT5N"
    volume = read_dicom_volume(folder)
    assert volume.shape == (16, 16, 5) and volume.modality == "CT"
    assert np.allclose(volume.spacing, (0.488281, 0.488281, 2.5), atol=1e-5)
    datasets = [pydicom.dcmread(p) for p in folder.iterdir()]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    expected = np.stack([pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).T for ds in datasets], axis=2)
    np.testing.assert_array_equal(volume.array, expected.astype(np.float32))
    assert volume.array.min() < -800  # air outside the body: Hounsfield units, not stored values
    assert any("RescaleIntercept -1024 (Hounsfield units)" in note for note in volume.conversions)
    theirs = highdicom.get_volume_from_series(datasets, dtype=np.float32).to_nibabel()
    our_values, our_affine = _canonical(volume.array, volume.affine)
    their_values, their_affine = _canonical(np.asarray(theirs.dataobj), theirs.affine)
    np.testing.assert_array_equal(our_values, their_values)
    assert np.allclose(our_affine, their_affine, atol=1e-4)


def _rotation(degrees_x: float, degrees_z: float) -> np.ndarray:
    a, b = np.radians(degrees_x), np.radians(degrees_z)
    about_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    about_z = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return about_z @ about_x


def test_oblique_anisotropic_series_keeps_its_affine(t1, tmp_path):
    affine = np.eye(4)
    affine[:3, :3] = _rotation(20.0, -12.0) @ np.diag([0.9, 1.1, 2.5])
    affine[:3, 3] = [10.5, -40.25, 3.0]
    oblique = ScanVolume(array=t1.array, affine=affine, modality="MR")
    write_dicom_series(oblique, tmp_path / "oblique")
    volume = read_dicom_volume(tmp_path / "oblique")
    np.testing.assert_array_equal(volume.array, t1.array)
    assert np.allclose(volume.affine, affine, atol=1e-4)


def test_left_handed_nifti_grid_comes_back_in_slice_normal_order(t1, tmp_path):
    # An LAS grid (FSL's usual): DICOM keeps no k direction, so k comes back along the slice normal;
    # the same voxels lie at the same world points.
    affine = t1.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[0, 3] = t1.affine[0, 3] + t1.shape[0] - 1
    las = ScanVolume(array=t1.array[::-1], affine=affine, modality="MR")
    write_dicom_series(las, tmp_path / "las")
    volume = read_dicom_volume(tmp_path / "las")
    ours, ours_affine = _canonical(volume.array, volume.affine)
    original, original_affine = _canonical(las.array, las.affine)
    np.testing.assert_array_equal(ours, original)
    assert np.allclose(ours_affine, original_affine, atol=1e-4)
    assert np.linalg.det(volume.affine[:3, :3]) > 0


def test_read_volume_dispatches_a_folder_here(series, t1):
    volume = read_volume(series)
    np.testing.assert_array_equal(volume.array, t1.array)


# -- several series, zips, clutter ----------------------------------------------------------------
@pytest.fixture(scope="module")
def cluttered_zip(tmp_path_factory, t1) -> Path:
    """A study folder: the T1 series, a localizer series, a DICOMDIR, a report without pixels, a
    README and a thumbnail, zipped."""
    root = tmp_path_factory.mktemp("study")
    study_uid = pydicom.uid.generate_uid()
    write_dicom_series(t1, root / "series" / "t1", study_uid=study_uid)
    write_localizer(root / "series" / "localizer", study_uid)
    shutil.copy(get_testdata_file("DICOMDIR"), root / "DICOMDIR")
    shutil.copy(get_testdata_file("reportsi.dcm"), root / "series" / "report.dcm")
    (root / "README.txt").write_text("Exported by a PACS.\n")
    (root / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    return zip_folder(root, tmp_path_factory.mktemp("zips") / "study.zip")


def test_zip_with_localizer_gives_two_volumes_and_one_refusal(cluttered_zip, t1):
    volumes = read_dicom_volumes(cluttered_zip)
    assert len(volumes) == 2
    localizer, scan = sorted(volumes, key=lambda v: v.shape[2])
    assert localizer.shape == (48, 40, 2)
    np.testing.assert_array_equal(scan.array, t1.array)
    assert np.allclose(scan.affine, t1.affine, atol=1e-4)
    notes = " | ".join(scan.conversions)
    assert "2 non-DICOM files ignored" in notes and "2 DICOM files without pixel data ignored" in notes

    with pytest.raises(VolumeReadError) as refusal:
        read_dicom_volume(cluttered_zip)
    message = str(refusal.value)
    assert "2 series" in message and "never merged" in message and "series_index" in message
    assert "MR, 72 x 64 pixels, 40 slices, axial" in message
    assert "MR, 40 x 48 pixels, 2 slices, sagittal" in message

    infos = list_dicom_series(cluttered_zip)
    pick = next(info.index for info in infos if info.slices == 40)
    picked = read_dicom_volume(cluttered_zip.read_bytes(), series_index=pick)  # zip bytes work as well
    np.testing.assert_array_equal(picked.array, t1.array)
    assert any("1 other series ignored" in note for note in picked.conversions)
    with pytest.raises(VolumeReadError, match="series 7 does not exist"):
        read_dicom_volume(cluttered_zip, series_index=7)


def test_zip_member_pointing_outside_is_refused(tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(get_testdata_file("CT_small.dcm"), "../../etc/slice.dcm")
    with pytest.raises(VolumeReadError, match="points outside the archive"):
        read_dicom_volume(path)


def test_zip_expanding_past_the_upload_limit_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.dcm", bytes(5_000_000))
    assert path.stat().st_size < 50_000
    monkeypatch.setenv("MEDCLIPSEG_MAX_VOLUME_BYTES", "1000000")
    monkeypatch.setattr(dicom_series, "_read_header", _never_called)
    limit_message = r"expands to 5.0 MB; the limit for one upload is 1.0 MB \(MEDCLIPSEG_MAX_VOLUME_BYTES\)"
    with pytest.raises(VolumeReadError, match=limit_message):
        read_dicom_volume(path)
    with pytest.raises(VolumeReadError, match="expands to"):
        read_dicom_volume(path.read_bytes())


def test_zip_with_too_many_members_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(5):
            archive.writestr(f"note{index}.txt", "x")
    monkeypatch.setattr(dicom_series, "_MAX_FILES", 4)
    with pytest.raises(VolumeReadError, match="holds 5 files; the limit is 4"):
        read_dicom_volume(path)


def _never_called(*args, **kwargs):
    raise AssertionError("this step must not run")


# -- refusals -------------------------------------------------------------------------------------
def test_missing_slice_is_refused_naming_the_gap(series, tmp_path):
    folder = _copy(series, tmp_path)
    _files_by_position(folder)[20].unlink()
    with pytest.raises(VolumeReadError) as refusal:
        read_dicom_volume(folder)
    message = str(refusal.value)
    assert "a slice is missing between positions 18.00 mm and 20.00 mm" in message
    assert "2.00 mm where the other slices are 1.00 mm apart" in message


def test_uneven_spacing_is_refused(series, tmp_path):
    folder = _copy(series, tmp_path)
    path = _files_by_position(folder)[10]
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], 9.4]  # was 9.0
    ds.save_as(path)
    with pytest.raises(VolumeReadError, match=r"not evenly spaced: 1.40 mm between positions 8.00 mm and 9.40 mm"):
        read_dicom_volume(folder)


def test_real_series_with_a_gap_is_refused():
    with pytest.raises(VolumeReadError, match="161 slices are missing between positions -99.48 mm and 103.02 mm"):
        read_dicom_volume(DICOMDIR_TESTS / "77654033" / "CT2")


def test_duplicate_positions_are_refused():
    copies = [get_testdata_file(name) for name in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm")]
    with pytest.raises(VolumeReadError, match="3 slices share a position|several slices share a position"):
        read_dicom_volume(copies)


def test_mixed_orientation_within_a_series_is_refused(series, tmp_path):
    folder = _copy(series, tmp_path)
    path = _files_by_position(folder)[5]
    ds = pydicom.dcmread(path)
    angle = np.radians(0.5)
    ds.ImageOrientationPatient = [-np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), -np.cos(angle), 0.0]
    ds.save_as(path)
    with pytest.raises(VolumeReadError, match=r"mixed orientations .*0.50 degrees"):
        read_dicom_volume(folder)


def test_radial_series_in_many_orientations_is_not_a_volume():
    with pytest.raises(VolumeReadError, match="7 images in 7 different orientations"):
        read_dicom_volume(DICOMDIR_TESTS / "98892003" / "MR700")


def test_gantry_tilt_is_refused(t1, tmp_path):
    tilted_affine = t1.affine.copy()
    tilted_affine[1, 2] = np.tan(np.radians(15.0))  # each slice shifted 0.27 mm anteriorly: a 15 degree tilt
    write_dicom_series(ScanVolume(array=t1.array, affine=tilted_affine), tmp_path / "tilted")
    with pytest.raises(VolumeReadError, match=r"stacked at 15.0 degrees to their normal \(gantry tilt"):
        read_dicom_volume(tmp_path / "tilted")


def test_single_image_is_refused_as_2d():
    with pytest.raises(VolumeReadError, match="single 2-D image has no second slice"):
        read_dicom_volume(get_testdata_file("CT_small.dcm"))


def test_dicom_without_pixel_data_is_refused_in_words(tmp_path):
    with pytest.raises(VolumeReadError, match="1 DICOM file holds no pixel data"):
        read_dicom_volume(get_testdata_file("reportsi.dcm"))
    with pytest.raises(VolumeReadError, match="51 DICOM files hold no pixel data"):
        read_dicom_volume(DICOMDIR_TESTS / "TINY_ALPHA")
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(VolumeReadError, match="holds no DICOM files"):
        read_dicom_volume(tmp_path)


def test_size_over_the_limit_is_refused_before_decoding(series, monkeypatch):
    monkeypatch.setenv("MEDCLIPSEG_MAX_VOLUME_VOXELS", "100000")
    monkeypatch.setattr(dicom_series, "_read_pixels", _never_called)
    with pytest.raises(VolumeReadError, match=r"184,320 voxels .*MEDCLIPSEG_MAX_VOLUME_VOXELS"):
        read_dicom_volume(series)


# -- values and transfer syntaxes -----------------------------------------------------------------
def test_ct_rescale_gives_hounsfield_units(t1, tmp_path):
    hounsfield = t1.array * 2.0 - 1024.0  # stored values are the T1's: slope 2, intercept -1024
    ct = ScanVolume(array=hounsfield, affine=t1.affine, modality="CT")
    write_dicom_series(ct, tmp_path / "ct", modality="CT", rescale=(2.0, -1024.0))
    stored = pydicom.dcmread(next((tmp_path / "ct").iterdir())).pixel_array
    assert stored.min() >= 0  # the file holds raw values, not Hounsfield units
    volume = read_dicom_volume(tmp_path / "ct")
    assert volume.modality == "CT"
    np.testing.assert_array_equal(volume.array, hounsfield.astype(np.float32))
    assert any("RescaleSlope 2, RescaleIntercept -1024" in note for note in volume.conversions)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless], ids=lambda s: s.name)
def test_compressed_series_decode_equal(t1, tmp_path, syntax):
    small = ScanVolume(array=t1.array[:, :, :6], affine=t1.affine, modality="MR")
    write_dicom_series(small, tmp_path / "compressed", transfer_syntax=syntax)
    assert pydicom.dcmread(next((tmp_path / "compressed").iterdir())).file_meta.TransferSyntaxUID == syntax
    volume = read_dicom_volume(tmp_path / "compressed")
    np.testing.assert_array_equal(volume.array, small.array)
    assert np.allclose(volume.affine, small.affine, atol=1e-4)


def test_transfer_syntax_without_decoder_is_refused_by_name(t1, tmp_path, monkeypatch):
    small = ScanVolume(array=t1.array[:, :, :3], affine=t1.affine, modality="MR")
    paths = write_dicom_series(small, tmp_path / "video", transfer_syntax=RLELossless)
    for path in paths:  # relabelled as H.265 video, which no pydicom decoder reads
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.HEVCMP51
        ds.save_as(path)
    monkeypatch.setattr(dicom_series, "_read_pixels", _never_called)
    refusal = (r"stored as HEVC/H.265 Main Profile / Level 5.1 \(1.2.840.10008.1.2.4.107\), "
               "a transfer syntax no installed decoder reads")
    with pytest.raises(VolumeReadError, match=refusal):
        read_dicom_volume(tmp_path / "video")

    class MissingPlugin:
        is_available = False
        missing_dependencies = ["pylibjpeg-openjpeg - requires pylibjpeg-openjpeg>=2"]

    jpeg2000_folder = tmp_path / "j2k"
    write_dicom_series(small, jpeg2000_folder, transfer_syntax=JPEG2000Lossless)
    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda syntax: MissingPlugin())
    with pytest.raises(VolumeReadError, match=r"JPEG 2000 Image Compression \(Lossless Only\) .*no decoder for it "
                                              r"is installed \(needs one of: pylibjpeg-openjpeg"):
        read_dicom_volume(jpeg2000_folder)


# -- multi-frame ----------------------------------------------------------------------------------
def test_enhanced_multiframe_reads_as_volume_sorted_by_position(series, t1, tmp_path):
    import highdicom.legacy

    datasets = [pydicom.dcmread(p) for p in series.iterdir()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enhanced = highdicom.legacy.LegacyConvertedEnhancedMRImage(
            datasets, series_instance_uid=pydicom.uid.generate_uid(), series_number=9,
            sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1)
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path)
    assert int(enhanced.NumberOfFrames) == 40 and "PerFrameFunctionalGroupsSequence" in enhanced
    volume = read_dicom_volume(path)
    np.testing.assert_array_equal(volume.array, t1.array)
    assert np.allclose(volume.affine, t1.affine, atol=1e-4)
    assert volume.source_format == "dicom-multiframe" and len(volume.dicom_headers) == 1
    # The converter orders frames by instance number, which the series runs against the position.
    assert volume.frame_numbers == list(range(40, 0, -1))
    for k in (0, 39):
        frame = enhanced.PerFrameFunctionalGroupsSequence[volume.frame_numbers[k] - 1]
        assert float(frame.PlanePositionSequence[0].ImagePositionPatient[2]) == pytest.approx(-1.0 + k)


def test_rt_dose_multiframe_placed_by_grid_frame_offsets():
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    volume = read_dicom_volume(get_testdata_file("rtdose.dcm"))
    assert volume.shape == (10, 10, 15) and volume.frame_numbers == list(range(1, 16))
    origin = np.array([float(v) for v in ds.ImagePositionPatient])
    offsets = [float(v) for v in ds.GridFrameOffsetVector]
    for k in (0, 7, 14):
        lps = np.diag([-1, -1, 1]) @ (volume.affine[:3, :3] @ [0, 0, k] + volume.affine[:3, 3])
        assert np.allclose(lps, origin + offsets[k] * np.array([0, 0, 1.0]))
    expected = ds.pixel_array.transpose(2, 1, 0) * float(ds.DoseGridScaling)
    np.testing.assert_allclose(volume.array, expected, rtol=1e-6)
    for variant in ("rtdose_rle.dcm", "rtdose_expb.dcm"):  # RLE and big-endian encodings of the same dose
        np.testing.assert_array_equal(read_dicom_volume(get_testdata_file(variant)).array, volume.array)


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "SC_rgb_rle_2frame.dcm"])
def test_multiframe_without_positions_is_refused(name):
    with pytest.raises(VolumeReadError, match="frames .*but no per-frame position.*cine loop"):
        read_dicom_volume(get_testdata_file(name))


def test_segmentation_objects_are_not_scans():
    with pytest.raises(VolumeReadError, match="segmentation or presentation object, not a scan"):
        read_dicom_volume(get_testdata_file("liver_1frame.dcm"))


# -- privacy --------------------------------------------------------------------------------------
def _assert_nothing_identifying(text: str) -> None:
    for keyword, value in IDENTIFYING_VALUES.items():
        assert value not in text, f"{keyword} ({value!r}) survived de-identification"
    for fragment in ("Jane", "Doe", "ID-1234", "private note", "MEDCLIPSEG TEST"):
        assert fragment not in text


def test_headers_keep_references_and_drop_identifiers(series):
    volume = read_dicom_volume(series)
    text = headers_to_json(volume.dicom_headers)
    _assert_nothing_identifying(text)
    first_source = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    restored = headers_from_json(text)
    assert len(restored) == 40
    for header in restored:
        for keyword in ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            assert header[keyword].value == first_source[keyword].value
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID",
                        "AccessionNumber", "ReferringPhysicianName", "StudyDate", "StudyTime"):
            assert keyword in header and not header[keyword].value
        assert "PixelData" not in header and "InstitutionName" not in header
        assert not any(element.tag.is_private for element in header)
    assert {h.SOPInstanceUID for h in restored} == {pydicom.dcmread(p).SOPInstanceUID for p in series.iterdir()}
    assert restored[3].ImagePositionPatient == volume.dicom_headers[3].ImagePositionPatient


def test_deidentified_header_of_an_enhanced_file_keeps_geometry_only(series):
    import highdicom.legacy

    datasets = [pydicom.dcmread(p) for p in sorted(series.iterdir())[:4]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enhanced = highdicom.legacy.LegacyConvertedEnhancedMRImage(
            datasets, series_instance_uid=pydicom.uid.generate_uid(), series_number=9,
            sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1)
    header = deidentified_header(enhanced)
    text = json.dumps(header.to_json_dict())
    _assert_nothing_identifying(text)
    assert len(header.PerFrameFunctionalGroupsSequence) == 4
    assert "PlanePositionSequence" in header.PerFrameFunctionalGroupsSequence[0]
    assert "FrameContentSequence" not in header.PerFrameFunctionalGroupsSequence[0]
    assert "PlaneOrientationSequence" in header.SharedFunctionalGroupsSequence[0]


def test_stored_headers_are_enough_for_a_dicom_seg(series):
    import highdicom
    from pydicom.sr.codedict import codes

    volume = read_dicom_volume(series)
    headers = headers_from_json(headers_to_json(volume.dicom_headers))
    mask = (volume.array > 60).transpose(2, 1, 0).astype(np.uint8)  # (k, row, column) = frames of the headers
    description = highdicom.seg.SegmentDescription(
        segment_number=1, segment_label="brain", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Brain, algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=highdicom.AlgorithmIdentificationSequence(
            name="test", version="1", family=codes.DCM.ArtificialIntelligence))
    seg = highdicom.seg.Segmentation(
        source_images=headers, pixel_array=mask, segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=highdicom.UID(), series_number=100,
        sop_instance_uid=highdicom.UID(), instance_number=1, manufacturer="tests", manufacturer_model_name="tests",
        software_versions="1", device_serial_number="1", omit_empty_frames=False)
    buffer = io.BytesIO()
    seg.save_as(buffer)
    _assert_nothing_identifying(buffer.getvalue().decode("latin-1"))
    assert int(seg.NumberOfFrames) == 40 and seg.StudyInstanceUID == headers[0].StudyInstanceUID


def test_headers_from_json_refuses_other_text():
    with pytest.raises(ValueError, match="not valid JSON"):
        headers_from_json("{not json")
    with pytest.raises(ValueError, match="not a list of DICOM JSON objects"):
        headers_from_json('{"a": 1}')
