"""Real volumes and DICOM series written from them, for the volume tests (imported by several test files).

Stable API:

* :data:`MRICRON_T1`, :func:`real_t1`: the MRIcron ``ch2bet`` T1 template (a real brain MRI, 1 mm,
  RAS affine), optionally cropped to a small sub-volume for fast tests. Tests skip when it is missing.
* :func:`write_dicom_series`: a :class:`~medclipseg.io.volumes.ScanVolume` as one single-frame DICOM
  file per k slice, with correct patient geometry, identifying patient values (so privacy tests can
  check they are dropped), shuffled file names and reversed instance numbers.
* :func:`write_localizer`: a 2-slice localizer series in another orientation, same study.
* :func:`zip_folder`: a folder as a zip.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytest

from medclipseg.io.volumes import ScanVolume, read_nifti

MRICRON_T1 = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
# The crop of real_t1(crop=True): a block through the middle of the brain, small enough for CPU tests.
T1_CROP_SHAPE = (64, 72, 40)
T1_CROP_START = (58, 70, 70)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
# Identifying values written into every test file; de-identification tests look for them.
IDENTIFYING_VALUES = {
    "PatientName": "Doe^Jane",
    "PatientID": "ID-1234",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "AccessionNumber": "ACC-98765",
    "InstitutionName": "Saint Example Hospital",
    "ReferringPhysicianName": "Referrer^Robert",
    "PerformingPhysicianName": "Performer^Paula",
    "OperatorsName": "Operator^Otto",
    "StudyID": "STUDY-555",
    "StudyDate": "20240229",
    "StudyTime": "101112",
    "StudyDescription": "Brain study of Jane Doe",
    "SeriesDescription": "T1 for Jane Doe",
}
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def real_t1(crop: bool = True) -> ScanVolume:
    """The MRIcron ch2bet T1 (181 x 217 x 181, 1 mm); ``crop`` keeps the 64 x 72 x 40 block at
    :data:`T1_CROP_START` with the affine moved by the crop offset. Skips the test when missing."""
    if not MRICRON_T1.is_file():
        pytest.skip(f"{MRICRON_T1} is not installed (Debian package mricron-data)")
    volume = read_nifti(MRICRON_T1)
    volume.modality = "MR"
    if not crop:
        return volume
    start = np.array(T1_CROP_START)
    stop = start + np.array(T1_CROP_SHAPE)
    array = np.ascontiguousarray(volume.array[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]])
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ start + volume.affine[:3, 3]
    return ScanVolume(array=array, affine=affine, modality="MR", name="ch2bet crop", source_format="nifti")


def _ds_number(value: float) -> str:
    """A number as a DICOM decimal string (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _uid_file_name(uid: str) -> str:
    # Names from a hash of the SOP Instance UID: unique, and unrelated to the slice order.
    return "IMG" + hashlib.sha1(uid.encode()).hexdigest()[:12].upper()


def _base_dataset(sop_class: str, sop_uid: str):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def _set_identity(ds, patient_name: str, patient_id: str) -> None:
    for keyword, value in IDENTIFYING_VALUES.items():
        setattr(ds, keyword, value)
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    # A private element with identifying text: it must not survive de-identification either.
    block = ds.private_block(0x0011, "MEDCLIPSEG TEST", create=True)
    block.add_new(0x01, "LO", f"private note about {patient_name}")


def write_dicom_series(volume: ScanVolume, folder, *, modality: str = "MR", shuffle_names: bool = True,
                       reverse_instance_numbers: bool = True, series_uid: Optional[str] = None,
                       study_uid: Optional[str] = None, rescale: Sequence[float] = (1.0, 0.0),
                       patient_name: str = "Doe^Jane", patient_id: str = "ID-1234", start_number: int = 1,
                       transfer_syntax=None, frame_of_reference_uid: Optional[str] = None,
                       series_number: int = 3) -> list:
    """Write ``volume`` as a single-frame CT or MR DICOM series, one file per k slice, into ``folder``.

    Geometry: ImagePositionPatient / ImageOrientationPatient / PixelSpacing from the RAS affine
    (converted to LPS), pixel [row, column] = ``array[column, row, k]``. Values are stored as int16
    ``round((value - intercept) / slope)`` with ``rescale = (slope, intercept)``. SliceLocation and
    InstanceNumber run against the position when ``reverse_instance_numbers`` (readers must sort by
    position). Returns the written paths in k order.
    """
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    transfer_syntax = transfer_syntax or ExplicitVRLittleEndian
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    slope, intercept = float(rescale[0]), float(rescale[1])
    sop_class = CT_IMAGE_STORAGE if modality.upper() == "CT" else MR_IMAGE_STORAGE

    lps = _LPS_FROM_RAS @ volume.affine
    column_step, row_step = lps[:3, 0], lps[:3, 1]  # i runs along a row (next column), j down a column
    row_cosines = column_step / np.linalg.norm(column_step)
    column_cosines = row_step / np.linalg.norm(row_step)
    pixel_spacing = [np.linalg.norm(row_step), np.linalg.norm(column_step)]
    slice_thickness = float(np.linalg.norm(lps[:3, 2]))
    stored = np.rint((np.asarray(volume.array, dtype=np.float64) - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("the values do not fit int16 with this rescale")
    stored = stored.astype(np.int16)
    count = volume.shape[2]
    paths = []
    for k in range(count):
        sop_uid = generate_uid()
        ds = _base_dataset(sop_class, sop_uid)
        _set_identity(ds, patient_name, patient_id)
        ds.Modality = modality.upper()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "MedCLIPSeg tests"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        order = (count - 1 - k) if reverse_instance_numbers else k
        ds.InstanceNumber = start_number + order
        position = lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + lps[:3, 3]
        ds.ImagePositionPatient = [_ds_number(v) for v in position]
        ds.ImageOrientationPatient = [_ds_number(v) for v in (*row_cosines, *column_cosines)]
        ds.PixelSpacing = [_ds_number(v) for v in pixel_spacing]
        ds.SliceThickness = _ds_number(slice_thickness)
        ds.SliceLocation = _ds_number(float(order))  # deliberately unrelated to the position
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if sop_class == CT_IMAGE_STORAGE or (slope, intercept) != (1.0, 0.0):
            ds.RescaleSlope = _ds_number(slope)
            ds.RescaleIntercept = _ds_number(intercept)
            ds.RescaleType = "HU" if sop_class == CT_IMAGE_STORAGE else "US"
        if sop_class == CT_IMAGE_STORAGE:
            ds.KVP = "120"
            ds.AcquisitionNumber = 1
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "SP", ""
            ds.MRAcquisitionType = "3D"
            ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "4.6", "9.8", "1"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        if transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax)
        name = _uid_file_name(sop_uid) if shuffle_names else f"slice_{k:04d}.dcm"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_localizer(folder, study_uid: str, *, frame_of_reference_uid: Optional[str] = None,
                    modality: str = "MR", patient_name: str = "Doe^Jane", patient_id: str = "ID-1234",
                    shape: Sequence[int] = (48, 40)) -> list:
    """A 2-file sagittal localizer series (its own SeriesInstanceUID, orientation and size) in the
    study ``study_uid``; returns the paths. Values are a smooth pattern, not zeros."""
    columns, rows = int(shape[0]), int(shape[1])
    i, j = np.meshgrid(np.arange(columns), np.arange(rows), indexing="ij")
    pattern = (100 + 50 * np.sin(i / 5.0) * np.cos(j / 7.0)).astype(np.float32)
    array = np.stack([pattern, pattern + 10], axis=2)
    # Sagittal slices 20 mm apart (RAS): i runs towards anterior, j towards inferior, k towards the right.
    affine = np.array([[0.0, 0.0, 20.0, -10.0],
                       [4.0, 0.0, 0.0, -96.0],
                       [0.0, -4.0, 0.0, 80.0],
                       [0.0, 0.0, 0.0, 1.0]])
    localizer = ScanVolume(array=array, affine=affine, modality=modality)
    return write_dicom_series(localizer, folder, modality=modality, study_uid=study_uid,
                              frame_of_reference_uid=frame_of_reference_uid, patient_name=patient_name,
                              patient_id=patient_id, series_number=1)


def zip_folder(folder, zip_path) -> Path:
    """Every file under ``folder`` into ``zip_path`` (deflated), named relative to ``folder``."""
    folder, zip_path = Path(folder), Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return zip_path
