"""NIfTI and DICOM-SEG writers on a ScanVolume's grid (medclipseg.io.volume_writers).

The DICOM-sourced volumes here are built in the test from a crop of the real MRIcron ch2bet T1:
one pydicom header per k slice, de-identified as medclipseg.io.dicom_series leaves them, with
geometry derived from the RAS affine the same way a DICOM reader inverts it.
"""
from __future__ import annotations

import copy
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from medclipseg.io.volumes import ScanVolume, read_nifti
from medclipseg.io.volume_writers import (
    SEG_MANUFACTURER,
    SEGMENTATION_SOP_CLASS_UID,
    VolumeWriteError,
    read_dicom_seg_mask,
    segment_property_codes,
    structure_label,
    write_dicom_seg,
    write_nifti,
)

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

T1_PATH = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
CROP_START = (62, 80, 70)
CROP_SHAPE = (40, 48, 14)
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Type 2 patient/study attributes a de-identified header keeps, empty.
EMPTY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber",
               "ReferringPhysicianName", "StudyDate", "StudyTime")
IDENTIFYING = {"PatientName": "Doe^Jane", "PatientID": "ID-1234", "PatientBirthDate": "19700101",
               "AccessionNumber": "ACC-98765", "InstitutionName": "Saint Example Hospital",
               "ReferringPhysicianName": "Referrer^Robert", "PerformingPhysicianName": "Performer^Paula",
               "StudyDescription": "Brain study of Jane Doe"}


# -- fixtures -------------------------------------------------------------------------------------
def _t1_crop(start=CROP_START, shape=CROP_SHAPE) -> ScanVolume:
    if not T1_PATH.is_file():
        pytest.skip(f"{T1_PATH} is not installed (Debian package mricron-data)")
    full = read_nifti(T1_PATH)
    start = np.asarray(start)
    stop = start + np.asarray(shape)
    array = np.ascontiguousarray(full.array[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]])
    affine = full.affine.copy()
    affine[:3, 3] = full.affine[:3, :3] @ start + full.affine[:3, 3]  # voxel `start` is the new origin
    return ScanVolume(array=array, affine=affine, modality="MR", name="ch2bet crop")


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _slice_headers(volume: ScanVolume) -> list:
    """One de-identified header per k slice (no pixel data), geometry from the RAS affine:
    pixel (row j, column i) of slice k is voxel [i, j, k]."""
    lps = LPS_FROM_RAS @ volume.affine
    column_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    row_cosines = column_step / np.linalg.norm(column_step)
    column_cosines = row_step / np.linalg.norm(row_step)
    # A DICOM reader sorts along the normal; k must run along it for k to be the sorted order.
    assert np.dot(np.cross(row_cosines, column_cosines), slice_step) > 0
    study, series, frame_of_reference = hd.UID(), hd.UID(), hd.UID()
    headers = []
    for k in range(volume.shape[2]):
        header = pydicom.Dataset()
        header.SOPClassUID = MR_IMAGE_STORAGE
        header.SOPInstanceUID = hd.UID()
        header.StudyInstanceUID = study
        header.SeriesInstanceUID = series
        header.FrameOfReferenceUID = frame_of_reference
        header.Modality = "MR"
        header.Rows, header.Columns = volume.shape[1], volume.shape[0]
        header.PixelSpacing = [_ds(np.linalg.norm(row_step)), _ds(np.linalg.norm(column_step))]
        header.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + k * slice_step]
        header.ImageOrientationPatient = [_ds(v) for v in (*row_cosines, *column_cosines)]
        header.SliceThickness = _ds(np.linalg.norm(slice_step))
        header.BitsAllocated, header.BitsStored, header.HighBit, header.PixelRepresentation = 16, 16, 15, 1
        header.PhotometricInterpretation = "MONOCHROME2"
        header.SamplesPerPixel = 1
        for keyword in EMPTY_TYPE2:
            setattr(header, keyword, "")
        headers.append(header)
    return headers


def _dicom_volume(volume: ScanVolume, headers=None) -> ScanVolume:
    return ScanVolume(array=volume.array, affine=volume.affine, modality="MR", name=volume.name,
                      source_format="dicom", dicom_headers=headers or _slice_headers(volume))


@pytest.fixture(scope="module")
def t1() -> ScanVolume:
    return _t1_crop()


@pytest.fixture(scope="module")
def dicom_t1(t1) -> ScanVolume:
    return _dicom_volume(t1)


def _brain_mask(volume: ScanVolume) -> np.ndarray:
    """A real-looking mask with empty slices at both ends (so omitted empty frames would show)."""
    mask = volume.array > np.percentile(volume.array, 60)
    mask[:, :, :2] = False
    mask[:, :, -1] = False
    assert mask.any() and not mask[:, :, 0].any()
    return mask


def _write_seg(volume, mask, path, **overrides):
    options = dict(segment_label="brain", model_name="MedCLIPSeg tiny", model_version="0.1.0")
    options.update(overrides)
    return write_dicom_seg(volume, mask, path, **options)


# -- NIfTI ----------------------------------------------------------------------------------------
def test_write_nifti_keeps_voxels_and_affine(tmp_path, t1):
    mask = _brain_mask(t1)
    written = write_nifti(t1, mask, tmp_path / "mask.nii.gz", dtype=np.uint8)
    image = nib.load(written)
    assert written == tmp_path / "mask.nii.gz"
    assert np.array_equal(np.asarray(image.dataobj), mask.astype(np.uint8))
    assert image.get_data_dtype() == np.uint8
    assert np.allclose(image.affine, t1.affine, rtol=0, atol=1e-6)
    sform, sform_code = image.get_sform(coded=True)
    qform, qform_code = image.get_qform(coded=True)
    assert (int(sform_code), int(qform_code)) == (1, 1)
    assert np.allclose(sform, t1.affine, rtol=0, atol=1e-6)
    assert np.allclose(qform, t1.affine, rtol=0, atol=1e-6)

    probabilities = t1.array / t1.array.max()
    write_nifti(t1, probabilities, tmp_path / "probabilities.nii.gz", dtype=np.float32)
    again = read_nifti(tmp_path / "probabilities.nii.gz")
    assert np.array_equal(again.array, probabilities.astype(np.float32))
    assert np.allclose(again.affine, t1.affine, rtol=0, atol=1e-6)


@pytest.mark.parametrize("axcodes", [("L", "P", "S"), ("S", "L", "A"), ("P", "I", "R")])
def test_write_nifti_in_another_voxel_order(tmp_path, t1, axcodes):
    """The same scan saved in another voxel order: the mask written on that file's grid reads back
    with that file's affine, and lands on the same world voxels as the mask of the RAS original."""
    reoriented_image = t1.nifti_image().as_reoriented(
        nib.orientations.ornt_transform(nib.orientations.io_orientation(t1.affine),
                                        nib.orientations.axcodes2ornt(axcodes)))
    source = tmp_path / "scan.nii.gz"
    nib.save(reoriented_image, source)
    other = read_nifti(source)
    assert nib.orientations.aff2axcodes(other.affine) == axcodes
    mask = _brain_mask(t1)
    other_mask = np.asarray(nib.orientations.apply_orientation(
        mask, nib.orientations.ornt_transform(nib.orientations.io_orientation(t1.affine),
                                              nib.orientations.io_orientation(other.affine))))
    assert other_mask.shape == other.shape and np.array_equal(other_mask.sum(), mask.sum())

    write_nifti(other, other_mask, tmp_path / "mask.nii.gz", dtype=np.uint8)
    image = nib.load(tmp_path / "mask.nii.gz")
    assert np.array_equal(np.asarray(image.dataobj), other_mask.astype(np.uint8))
    assert np.allclose(image.affine, other.affine, rtol=0, atol=1e-6)
    # World position check: voxel v of the written file and the original voxel at the same mm agree.
    back_on_ras = nib.as_closest_canonical(image)
    assert np.array_equal(np.asarray(back_on_ras.dataobj).astype(bool), mask)
    assert np.allclose(back_on_ras.affine, t1.affine, rtol=0, atol=1e-6)


def test_write_nifti_refuses_wrong_grid_and_names(tmp_path, t1):
    with pytest.raises(VolumeWriteError, match="file grid is 40 x 48 x 14"):
        write_nifti(t1, np.zeros((14, 48, 40)), tmp_path / "m.nii.gz", dtype=np.uint8)
    with pytest.raises(VolumeWriteError, match="ends in .nii.gz"):
        write_nifti(t1, np.zeros(t1.shape), tmp_path / "m.png", dtype=np.uint8)
    bad = np.zeros(t1.shape, dtype=np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(VolumeWriteError, match="NaN or infinite"):
        write_nifti(t1, bad, tmp_path / "m.nii.gz", dtype=np.int16)
    with pytest.raises(VolumeWriteError, match="does not exist"):
        write_nifti(t1, np.zeros(t1.shape), tmp_path / "missing" / "m.nii.gz", dtype=np.uint8)
    assert list(tmp_path.iterdir()) == []


def test_write_nifti_is_atomic(tmp_path, t1, monkeypatch):
    """A failure halfway leaves the previous file whole and no temporary file behind."""
    target = tmp_path / "mask.nii.gz"
    write_nifti(t1, np.ones(t1.shape, dtype=bool), target, dtype=np.uint8)
    before = target.read_bytes()

    def fail_halfway(self, filename, **kwargs):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nib.Nifti1Image, "to_filename", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(t1, np.zeros(t1.shape, dtype=bool), target, dtype=np.uint8)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]


# -- DICOM-SEG: content ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def written_seg(tmp_path_factory, dicom_t1):
    mask = _brain_mask(dicom_t1)
    path = _write_seg(dicom_t1, mask, tmp_path_factory.mktemp("seg") / "brain.seg.dcm")
    return path, mask


def test_seg_round_trip_voxel_for_voxel(written_seg, dicom_t1):
    path, mask = written_seg
    back = read_dicom_seg_mask(path, dicom_t1)
    assert back.dtype == np.bool_ and back.shape == dicom_t1.shape
    assert np.array_equal(back, mask)


def _referenced_slices(seg, volume) -> list:
    k_of = {str(header.SOPInstanceUID): k for k, header in enumerate(volume.dicom_headers)}
    return [k_of[str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)]
            for item in seg.PerFrameFunctionalGroupsSequence]


def test_seg_frames_reference_their_slices(written_seg, dicom_t1):
    path, mask = written_seg
    seg = pydicom.dcmread(path)
    headers = dicom_t1.dicom_headers
    assert str(seg.SOPClassUID) == SEGMENTATION_SOP_CLASS_UID
    assert seg.SegmentationType == "BINARY"
    # Every slice has its frame, the empty ones included.
    assert int(seg.NumberOfFrames) == dicom_t1.shape[2] == len(headers)
    assert not mask[:, :, 0].any()
    referenced = _referenced_slices(seg, dicom_t1)
    assert sorted(referenced) == list(range(dicom_t1.shape[2]))
    # Source order along the slice axis: highdicom stores frames sorted along its own normal
    # (column x row), which is the reverse of the k order of a volume read from DICOM.
    assert referenced == list(range(dicom_t1.shape[2]))[::-1]
    frames = hd.seg.segread(path).pixel_array
    assert frames.shape == (dicom_t1.shape[2], dicom_t1.shape[1], dicom_t1.shape[0])
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        k = referenced[index]
        # The frame holds its slice's pixels (rows along j, columns along i) at its slice's position.
        assert np.array_equal(frames[index].astype(bool), mask[:, :, k].T)
        assert np.allclose([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
                           [float(v) for v in headers[k].ImagePositionPatient])


def test_seg_references_study_series_and_frame_of_reference(written_seg, dicom_t1):
    path, _ = written_seg
    seg = pydicom.dcmread(path)
    source = dicom_t1.dicom_headers[0]
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert {str(item.ReferencedSOPInstanceUID) for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        == {str(header.SOPInstanceUID) for header in dicom_t1.dicom_headers}
    # The SEG is a new series and instance of its own.
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.SOPInstanceUID not in {h.SOPInstanceUID for h in dicom_t1.dicom_headers}
    assert seg.Modality == "SEG"
    assert seg.Manufacturer == SEG_MANUFACTURER
    assert seg.ManufacturerModelName and seg.SoftwareVersions and seg.DeviceSerialNumber
    assert int(seg.SeriesNumber) > 0 and int(seg.InstanceNumber) == 1


def test_seg_segment_description(written_seg):
    path, _ = written_seg
    segment = pydicom.dcmread(path).SegmentSequence[0]
    assert int(segment.SegmentNumber) == 1
    assert segment.SegmentLabel == "brain"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "MedCLIPSeg tiny"
    assert algorithm.AlgorithmVersion == "0.1.0"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    kind = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "91723000")  # Anatomical Structure
    assert (kind.CodingSchemeDesignator, kind.CodeValue) == ("SCT", "12738006")  # Brain


def test_seg_semiautomatic_with_creator_and_description(tmp_path, dicom_t1):
    path = _write_seg(dicom_t1, _brain_mask(dicom_t1), tmp_path / "edited.dcm", algorithm_type="semiautomatic",
                      segment_label="Left  kidney\\cortex lésion " + "x" * 80,
                      series_description="Edited brain", content_creator="Reader^Rita")
    seg = pydicom.dcmread(path)
    segment = seg.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == "SEMIAUTOMATIC"
    # One line, no backslash (DICOM's separator), cut to DICOM's 64-character LO limit; accents kept.
    assert segment.SegmentLabel.startswith("Left kidney/cortex lésion x")
    assert len(segment.SegmentLabel.encode("utf-8")) == 64
    assert seg.SeriesDescription == "Edited brain"
    assert str(seg.ContentCreatorName) == "Reader^Rita"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion"


def test_segment_property_codes():
    def pair(label):
        category, kind = segment_property_codes(label)
        return category.meaning, kind.meaning

    assert pair("liver") == ("Anatomical Structure", "Liver")
    assert pair("Left kidneys") == ("Anatomical Structure", "Kidney")
    assert pair("liver tumour") == ("Morphologically Abnormal Structure", "Neoplasm")
    assert pair("lung nodules") == ("Morphologically Abnormal Structure", "Nodule")
    assert pair("lymph node") == ("Anatomical Structure", "Lymph Node")
    # Unknown structures get the most generic pair; "brainstem" is not the brain (whole words only).
    assert pair("brainstem") == ("Tissue", "Tissue")
    assert pair("region of interest") == ("Tissue", "Tissue")


def test_seg_carries_no_identifiers(tmp_path, t1, written_seg):
    """De-identified headers give a SEG with the Type 2 identifiers empty; and even headers that
    still hold identifiers (a de-identification slip) do not pass them on."""
    path, _ = written_seg
    seg = pydicom.dcmread(path)
    for keyword in EMPTY_TYPE2:
        assert keyword in seg and str(seg.get(keyword)) == "", keyword
    for keyword in ("InstitutionName", "PerformingPhysicianName", "OperatorsName", "OtherPatientIDs"):
        assert keyword not in seg

    leaky = _slice_headers(t1)
    for header in leaky:
        for keyword, value in IDENTIFYING.items():
            setattr(header, keyword, value)
    leaky_path = _write_seg(_dicom_volume(t1, leaky), _brain_mask(t1), tmp_path / "leaky.dcm")
    raw = leaky_path.read_bytes()
    assert [value for value in IDENTIFYING.values() if value.encode() in raw] == []


def test_seg_fractional_probabilities(tmp_path, dicom_t1):
    probabilities = (dicom_t1.array / dicom_t1.array.max()).astype(np.float32)
    path = _write_seg(dicom_t1, None, tmp_path / "fractional.dcm", fractional=probabilities)
    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    assert int(seg.NumberOfFrames) == dicom_t1.shape[2]
    stored = seg.pixel_array.astype(np.float32) / float(seg.MaximumFractionalValue)
    for index, k in enumerate(_referenced_slices(seg, dicom_t1)):
        assert np.abs(stored[index] - probabilities[:, :, k].T).max() <= 0.5 / 255 + 1e-6
    # Read back as a mask: probability >= 0.5, up to the 1/255 quantisation.
    back = read_dicom_seg_mask(path, dicom_t1)
    assert np.array_equal(back, np.rint(probabilities * 255) >= 127.5)


# -- DICOM-SEG: multi-frame sources ---------------------------------------------------------------
def _enhanced_file(t1):
    """The crop as one Legacy Converted Enhanced MR dataset, pixel data included (highdicom's
    converter needs it), built from the slices in shuffled order."""
    headers = _slice_headers(t1)
    stored = np.rint(t1.array).astype(np.int16)
    complete = []
    for k, header in enumerate(headers):
        full = copy.deepcopy(header)
        full.file_meta = pydicom.dataset.FileMetaDataset()
        full.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        full.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        full.InstanceNumber, full.SeriesNumber = k + 1, 3
        full.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        full.ScanningSequence, full.SequenceVariant, full.ScanOptions, full.MRAcquisitionType = "GR", "SP", "", "3D"
        full.EchoTime, full.RepetitionTime, full.EchoTrainLength = 4.6, 9.8, 1
        full.ContentDate, full.ContentTime, full.Manufacturer, full.PositionReferenceIndicator = "", "", "", ""
        complete.append(full)
    shuffled = [complete[k] for k in np.random.default_rng(3).permutation(len(complete))]
    return hd.legacy.LegacyConvertedEnhancedMRImage(
        shuffled, series_instance_uid=hd.UID(), series_number=4, sop_instance_uid=hd.UID(), instance_number=1)


@pytest.fixture(scope="module")
def enhanced_t1(t1):
    """A header of the enhanced file as the reader keeps it (no pixel data) and the frame number of
    each k slice, matched by position because the converter orders frames its own way."""
    enhanced = _enhanced_file(t1)
    del enhanced.PixelData
    lps_origin = (LPS_FROM_RAS @ t1.affine)[:3, 3]
    slice_step = (LPS_FROM_RAS @ t1.affine)[:3, 2]
    positions = np.array([[float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
                          for frame in enhanced.PerFrameFunctionalGroupsSequence])
    frame_numbers = [int(np.argmin(np.linalg.norm(positions - (lps_origin + k * slice_step), axis=1))) + 1
                     for k in range(t1.shape[2])]
    assert sorted(frame_numbers) == list(range(1, t1.shape[2] + 1))
    assert frame_numbers != list(range(1, t1.shape[2] + 1))  # the file's order is not k order
    return enhanced, frame_numbers


def test_seg_of_multiframe_source(tmp_path, t1, enhanced_t1):
    enhanced, frame_numbers = enhanced_t1
    volume = ScanVolume(array=t1.array, affine=t1.affine, source_format="dicom",
                        dicom_headers=[enhanced] * t1.shape[2], frame_numbers=frame_numbers)
    mask = _brain_mask(t1)
    path = _write_seg(volume, mask, tmp_path / "enhanced.dcm")
    seg = pydicom.dcmread(path)
    assert int(seg.NumberOfFrames) == t1.shape[2]
    referenced = [item.DerivationImageSequence[0].SourceImageSequence[0]
                  for item in seg.PerFrameFunctionalGroupsSequence]
    assert {str(item.ReferencedSOPInstanceUID) for item in referenced} == {str(enhanced.SOPInstanceUID)}
    # Each frame references one frame of the source and holds the mask of the k slice drawn from it.
    numbers = [int(item.ReferencedFrameNumber) for item in referenced]
    assert sorted(numbers) == list(range(1, t1.shape[2] + 1))
    frames = hd.seg.segread(path).pixel_array.astype(bool)
    for index, number in enumerate(numbers):
        assert np.array_equal(frames[index], mask[:, :, frame_numbers.index(number)].T)
    assert np.array_equal(read_dicom_seg_mask(path, volume), mask)


def test_seg_of_some_frames_of_a_multiframe_source(tmp_path, t1, enhanced_t1):
    """A volume drawn from some of the file's frames only (as from one stack of several)."""
    enhanced, frame_numbers = enhanced_t1
    keep = slice(3, 11)
    shift = np.eye(4)
    shift[2, 3] = keep.start
    volume = ScanVolume(array=t1.array[:, :, keep], affine=t1.affine @ shift, source_format="dicom",
                        dicom_headers=[enhanced], frame_numbers=frame_numbers[keep])
    mask = _brain_mask(t1)[:, :, keep]
    path = _write_seg(volume, mask, tmp_path / "some.dcm")
    seg = pydicom.dcmread(path)
    assert int(seg.NumberOfFrames) == volume.shape[2]
    numbers = [int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
               for item in seg.PerFrameFunctionalGroupsSequence]
    assert sorted(numbers) == sorted(frame_numbers[keep])
    frames = hd.seg.segread(path).pixel_array.astype(bool)
    for index, number in enumerate(numbers):
        assert np.array_equal(frames[index], mask[:, :, frame_numbers[keep].index(number)].T)
    assert np.array_equal(read_dicom_seg_mask(path, volume), mask)


# -- refusals -------------------------------------------------------------------------------------
def test_seg_refusals(tmp_path, t1, dicom_t1):
    mask = _brain_mask(t1)
    with pytest.raises(VolumeWriteError, match="^DICOM-SEG needs a DICOM-sourced volume; export NIfTI instead.$"):
        _write_seg(t1, mask, tmp_path / "a.dcm")
    with pytest.raises(VolumeWriteError, match="volume's file grid is 40 x 48 x 14"):
        _write_seg(dicom_t1, np.transpose(mask, (2, 1, 0)), tmp_path / "a.dcm")
    with pytest.raises(VolumeWriteError, match="must be boolean"):
        _write_seg(dicom_t1, mask * 0.7, tmp_path / "a.dcm")
    with pytest.raises(VolumeWriteError, match="AUTOMATIC or SEMIAUTOMATIC"):
        _write_seg(dicom_t1, mask, tmp_path / "a.dcm", algorithm_type="MANUAL")
    with pytest.raises(VolumeWriteError, match="segment label is empty"):
        _write_seg(dicom_t1, mask, tmp_path / "a.dcm", segment_label="  ")
    with pytest.raises(VolumeWriteError, match="not both"):
        _write_seg(dicom_t1, mask, tmp_path / "a.dcm", fractional=mask.astype(np.float32))
    with pytest.raises(VolumeWriteError, match="between 0 and 1"):
        _write_seg(dicom_t1, None, tmp_path / "a.dcm", fractional=dicom_t1.array)
    assert list(tmp_path.iterdir()) == []
    # 0/1 integers are a mask too.
    _write_seg(dicom_t1, mask.astype(np.uint8), tmp_path / "ints.dcm")


def test_read_seg_refuses_other_scans_and_files(tmp_path, t1, dicom_t1, written_seg):
    path, _ = written_seg
    with pytest.raises(VolumeWriteError, match="DICOM-sourced volume"):
        read_dicom_seg_mask(path, t1)
    another_scan = _dicom_volume(t1)  # same pixels, new UIDs: another acquisition
    with pytest.raises(VolumeWriteError, match="another scan"):
        read_dicom_seg_mask(path, another_scan)
    same_frame = _dicom_volume(t1)
    for header in same_frame.dicom_headers:
        header.FrameOfReferenceUID = dicom_t1.dicom_headers[0].FrameOfReferenceUID
    with pytest.raises(VolumeWriteError, match="another series"):
        read_dicom_seg_mask(path, same_frame)
    not_dicom = tmp_path / "note.dcm"
    not_dicom.write_text("not a DICOM file")
    with pytest.raises(VolumeWriteError, match="not a readable DICOM-SEG"):
        read_dicom_seg_mask(not_dicom, dicom_t1)


# -- validation and speed -------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_dciodvfy_finds_no_errors(tmp_path, t1, dicom_t1, enhanced_t1, written_seg):
    enhanced, frame_numbers = enhanced_t1
    multiframe = ScanVolume(array=t1.array, affine=t1.affine, source_format="dicom",
                            dicom_headers=[enhanced], frame_numbers=frame_numbers)
    probabilities = dicom_t1.array / dicom_t1.array.max()
    paths = [written_seg[0],
             _write_seg(dicom_t1, None, tmp_path / "fractional.dcm", fractional=probabilities),
             _write_seg(multiframe, _brain_mask(t1), tmp_path / "enhanced.dcm", algorithm_type="SEMIAUTOMATIC",
                        content_creator="Reader^Rita")]
    for path in paths:
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
        report = result.stdout + result.stderr
        assert "Segmentation" in report  # it recognised the IOD
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}:\n{report}"


def test_seg_write_time_256x256x108(tmp_path):
    shape = (256, 256, 108)
    affine = np.diag([0.9, 0.9, 2.0, 1.0])
    affine[:3, 3] = (-115.0, -115.0, -100.0)
    grid = ScanVolume(array=np.zeros(shape, dtype=np.float32), affine=affine)
    volume = _dicom_volume(grid)
    i, j, k = np.ogrid[:shape[0], :shape[1], :shape[2]]
    mask = ((i - 128) / 60.0) ** 2 + ((j - 120) / 50.0) ** 2 + ((k - 54) / 30.0) ** 2 < 1
    started = time.perf_counter()
    path = _write_seg(volume, mask, tmp_path / "big.dcm", segment_label="liver")
    seconds = time.perf_counter() - started
    print(f"DICOM-SEG write for {shape}: {seconds:.2f} s, {path.stat().st_size / 1e6:.1f} MB")
    assert seconds < 30
    assert np.array_equal(read_dicom_seg_mask(path, volume), mask)


# -- through the project's DICOM series reader ----------------------------------------------------
def test_seg_of_series_read_by_dicom_series(tmp_path):
    """A real series on disk (shuffled names, reversed instance numbers, identifying values),
    read by medclipseg.io.dicom_series, segmented, written as SEG and read back."""
    dicom_series = pytest.importorskip("medclipseg.io.dicom_series")
    volume_support = pytest.importorskip("volume_support")
    source = volume_support.real_t1(crop=True)
    written = volume_support.write_dicom_series(source, tmp_path / "series")
    volume = dicom_series.read_dicom_volume(tmp_path / "series")
    assert volume.source_format == "dicom" and volume.shape == source.shape
    mask = volume.array > np.percentile(volume.array, 70)
    mask[:, :, 0] = False
    path = _write_seg(volume, mask, tmp_path / "seg.dcm")
    assert np.array_equal(read_dicom_seg_mask(path, volume), mask)
    # The reader's k order is the files' (write_dicom_series returns them in k order), and each
    # frame references the file of its slice.
    files_in_k_order = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in written]
    assert [str(header.SOPInstanceUID) for header in volume.dicom_headers] == files_in_k_order
    seg = pydicom.dcmread(path)
    referenced = _referenced_slices(seg, volume)
    assert sorted(referenced) == list(range(volume.shape[2]))
    frames = hd.seg.segread(path).pixel_array.astype(bool)
    for index, k in enumerate(referenced):
        assert np.array_equal(frames[index], mask[:, :, k].T)
    raw = path.read_bytes()
    leaked = [value for value in volume_support.IDENTIFYING_VALUES.values() if value.encode() in raw]
    assert leaked == []


@pytest.mark.parametrize("geometry", ["shared", "per-frame"])
def test_seg_of_multiframe_file_read_by_dicom_series(tmp_path, t1, geometry):
    """An enhanced multi-frame file on disk, read by medclipseg.io.dicom_series, segmented, written
    as SEG and read back; with the plane orientation and pixel measures in the shared functional
    groups, or repeated per frame (highdicom only reads the shared ones)."""
    dicom_series = pytest.importorskip("medclipseg.io.dicom_series")
    enhanced = _enhanced_file(t1)
    if geometry == "per-frame":
        shared = enhanced.SharedFunctionalGroupsSequence[0]
        for macro in ("PlaneOrientationSequence", "PixelMeasuresSequence"):
            for item in enhanced.PerFrameFunctionalGroupsSequence:
                item[macro] = copy.deepcopy(shared[macro])
            del shared[macro]
    enhanced.PatientName, enhanced.PatientID = "Doe^Jane", "ID-1234"
    enhanced.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    volume = dicom_series.read_dicom_volume(tmp_path / "enhanced.dcm")
    assert volume.frame_numbers is not None and volume.shape == t1.shape
    assert np.allclose(volume.affine, t1.affine, atol=1e-4)
    mask = volume.array > np.percentile(volume.array, 70)
    mask[:, :, -2:] = False
    path = _write_seg(volume, mask, tmp_path / "seg.dcm")
    assert np.array_equal(read_dicom_seg_mask(path, volume), mask)
    seg = pydicom.dcmread(path)
    assert int(seg.NumberOfFrames) == volume.shape[2]
    raw = path.read_bytes()
    assert b"Doe^Jane" not in raw and b"ID-1234" not in raw
    if shutil.which("dciodvfy"):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
        assert [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")] == []


@pytest.mark.parametrize("prompt, label", [
    ("A round polyp in the colonoscopy image.", "Round polyp"),
    ("Brain in the brain MRI image.", "Brain"),
    ("Left hippocampus on the axial T1 slice", "Left hippocampus"),
    ("the liver tumour within a CT scan", "Liver tumour"),
    ("liver", "Liver"),
    ("In the image.", "In the image"),
])
def test_structure_label_is_the_prompts_target(prompt, label):
    assert structure_label(prompt) == label
