"""Writing results on a :class:`~medclipseg.io.volumes.ScanVolume`'s grid: NIfTI files and DICOM-SEG.

NIfTI (:func:`write_nifti`)
    The values are written on the volume's own file grid (its voxel order, not the display
    order) with the volume's affine as both sform and qform (code 1, scanner), so any viewer
    overlays the result on the original scan.

DICOM-SEG (:func:`write_dicom_seg`, :func:`read_dicom_seg_mask`)
    A Segmentation instance (SOP class 1.2.840.10008.5.1.4.1.1.66.4) built by highdicom from the
    volume's de-identified DICOM headers, one frame per k slice (empty frames are kept, because
    some viewers misplace segments when they are omitted), each frame referencing the SOP
    instance (or, for an enhanced multi-frame source, the frame) it was drawn on. The headers
    carry no pixel data; highdicom does not need any to build the references (checked with
    highdicom 0.28).

    Frame order: highdicom pairs pixel-array plane i with source image i (so the planes are given
    in k order), then always stores the frames sorted by position along its own slice normal
    (column x row cosines, the opposite of DICOM's row x column): for a volume read from DICOM
    that is descending k. Readers place frames by their references or positions, never by their
    order, and :func:`read_dicom_seg_mask` does the same.

    Segmented property codes (SNOMED CT, from ``pydicom.sr.codedict.codes``) are picked from the
    segment label by :func:`segment_property_codes`: a finding word (tumour, lesion, nodule, ...)
    gives category "Morphologically Abnormal Structure" and that finding; an organ word gives
    category "Anatomical Structure" and that organ; any other label gives category "Tissue" and
    type "Tissue", the most generic pair of DICOM's segmentation property categories, which
    claims nothing about the structure beyond the free-text label.

    Privacy: the SEG copies the patient and study modules from the headers, which
    :mod:`medclipseg.io.dicom_series` has already emptied; the writer blanks the identifying
    attributes once more on the result so that no name, ID, birth date, accession number,
    institution or physician can reach the file whatever headers it was given.

Both writers are atomic: the file is written under a temporary name in the destination folder and
renamed over the destination, so a reader never sees a half-written file.
"""
from __future__ import annotations

import os
import re
import secrets
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np

from medclipseg.io.volumes import ScanVolume

__all__ = [
    "SEGMENTATION_SOP_CLASS_UID",
    "SEG_MANUFACTURER",
    "VolumeWriteError",
    "read_dicom_seg_mask",
    "segment_property_codes",
    "structure_label",
    "write_dicom_seg",
    "write_nifti",
]

SEGMENTATION_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
SEG_MANUFACTURER = "MedCLIPSeg Annotator"
SEG_MANUFACTURER_MODEL_NAME = "MedCLIPSeg Annotator"
# A software device has no serial number, but the Enhanced General Equipment module requires one
# (Type 1); a fixed value identifies nothing about the machine it ran on.
SEG_DEVICE_SERIAL_NUMBER = "0"
# Segmentations get a series number far from the scanner's usual 1..100 so they sort after the scan.
DEFAULT_SEG_SERIES_NUMBER = 9901
# Fractional SEGs store probabilities as 0..255 (8 bits), highdicom's default resolution.
_MAX_FRACTIONAL_VALUE = 255
_ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC")
# DICOM LO (Long String) values hold at most 64 characters and no backslash.
_LO_MAX = 64

# Attributes that identify a patient, a visit or the people and place involved (highdicom copies the
# patient and study modules from the source headers, StudyDescription, PatientSex and PatientAge
# included). Type 2 attributes, which the SEG IOD requires to be present, are emptied; the others
# are removed. Dates count: the de-identified headers have empty study dates too.
_TYPE2_IDENTIFIERS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                      "ReferringPhysicianName", "StudyID", "StudyDate", "StudyTime")
_OPTIONAL_IDENTIFIERS = ("OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
                         "IssuerOfPatientID", "PatientAddress", "PatientTelephoneNumbers",
                         "PatientMotherBirthName", "MedicalRecordLocator", "PatientBirthName",
                         "PatientAge", "PatientSize", "PatientWeight", "EthnicGroup", "PatientComments",
                         "StudyDescription", "AdmittingDiagnosesDescription", "PhysiciansOfRecord",
                         "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
                         "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName",
                         "RequestingPhysician", "StationName")


class VolumeWriteError(ValueError):
    """A result could not be written; the message is meant to be shown to the user."""


# -- atomic files ---------------------------------------------------------------------------------
@contextmanager
def _atomic_destination(path, suffix: str):
    """Yield a temporary path next to ``path`` (same folder, so the final rename cannot cross file
    systems); on success rename it over ``path``, on failure remove it."""
    path = Path(path)
    if not path.parent.is_dir():
        raise VolumeWriteError(f"Cannot write {path.name}: the folder {path.parent} does not exist.")
    # The temporary name keeps the real suffix because nibabel picks gzip from the extension.
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.partial{suffix}"
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        try:
            temporary.unlink()
        except FileNotFoundError:
            pass
        raise


def _nifti_suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    if name.endswith(".nii"):
        return ".nii"
    raise VolumeWriteError(f"A NIfTI file name ends in .nii.gz (or .nii); {path.name!r} does not.")


# -- NIfTI ----------------------------------------------------------------------------------------
def _check_on_grid(values: np.ndarray, volume: ScanVolume, what: str) -> None:
    if values.shape != volume.shape:
        raise VolumeWriteError(
            f"The {what} has shape {' x '.join(map(str, values.shape))}, but the volume's file grid is "
            f"{' x '.join(map(str, volume.shape))}; map it back to the file's voxel order "
            "(ScanVolume.from_display) before writing.")


def write_nifti(volume: ScanVolume, values, path, *, dtype) -> Path:
    """Write ``values`` (an array on ``volume``'s file grid, ``[i, j, k]``) to ``path``
    (``.nii.gz`` or ``.nii``) as ``dtype``, with the volume's affine as sform and qform, atomically.

    Returns the path written. Refuses values on another grid and non-finite values for an integer
    ``dtype`` (the cast would invent numbers).
    """
    path = Path(path)
    suffix = _nifti_suffix(path)
    values = np.asarray(values)
    _check_on_grid(values, volume, "array to write")
    target = np.dtype(dtype)
    if target.kind in "iub" and values.dtype.kind in "fc" and not np.all(np.isfinite(values)):
        raise VolumeWriteError(
            f"The values contain NaN or infinite numbers, which {target.name} cannot store; "
            "replace them or write a floating-point file.")
    if target == np.bool_:
        # NIfTI has no boolean type; masks are stored as 0/1 bytes.
        target = np.dtype(np.uint8)
    image = volume.nifti_image(values, dtype=target)
    image.header.set_xyzt_units("mm")
    with _atomic_destination(path, suffix) as temporary:
        image.to_filename(str(temporary))
    return path


# -- DICOM-SEG: segment description --------------------------------------------------------------
def _code_tables():
    from pydicom.sr.codedict import codes

    sct = codes.SCT
    # Findings first: "liver tumour" is a tumour, not the liver.
    findings = [
        (("tumor", "tumour", "tumors", "tumours", "neoplasm", "neoplasms", "cancer", "carcinoma",
          "malignancy", "metastasis", "metastases", "glioma", "glioblastoma"), sct.Neoplasm),
        (("nodule", "nodules"), sct.Nodule),
        (("mass", "masses"), sct.Mass),
        (("cyst", "cysts"), sct.Cyst),
        (("hemorrhage", "haemorrhage", "bleed", "bleeding", "hematoma", "haematoma"), sct.Hemorrhage),
        (("edema", "oedema"), sct.Edema),
        (("necrosis", "necrotic"), sct.Necrosis),
        (("thrombus", "clot"), sct.Thrombus),
        (("lesion", "lesions", "polyp", "polyps", "abnormality"), sct.Lesion),
    ]
    organs = [
        (("lymph node", "lymph nodes"), sct.LymphNode),
        (("adrenal gland", "adrenal glands", "adrenal"), sct.AdrenalGland),
        (("small intestine", "small bowel"), sct.SmallIntestine),
        (("blood vessel", "blood vessels", "vessel", "vessels"), sct.BloodVessel),
        (("gallbladder", "gall bladder"), sct.Gallbladder),
        (("bladder", "urinary bladder"), sct.Bladder),
        (("brain",), sct.Brain),
        (("cerebellum",), sct.Cerebellum),
        (("hippocampus",), sct.Hippocampus),
        (("liver",), sct.Liver),
        (("kidney", "kidneys"), sct.Kidney),
        (("lung", "lungs"), sct.Lung),
        (("heart",), sct.Heart),
        (("spleen",), sct.Spleen),
        (("pancreas",), sct.Pancreas),
        (("prostate",), sct.Prostate),
        (("stomach",), sct.Stomach),
        (("colon",), sct.Colon),
        (("rectum",), sct.Rectum),
        (("duodenum",), sct.Duodenum),
        (("esophagus", "oesophagus"), sct.Esophagus),
        (("trachea",), sct.Trachea),
        (("aorta",), sct.Aorta),
        (("artery", "arteries"), sct.Artery),
        (("vein", "veins"), sct.Vein),
        (("uterus",), sct.Uterus),
        (("ovary", "ovaries"), sct.Ovary),
        (("thyroid",), sct.Thyroid),
        (("breast", "breasts"), sct.Breast),
        (("retina",), sct.Retina),
        (("eye", "eyes"), sct.Eye),
        (("femur",), sct.Femur),
        (("rib", "ribs"), sct.Rib),
        (("skull",), sct.Skull),
        (("vertebra", "vertebrae"), sct.Vertebra),
        (("spine",), sct.Spine),
        (("pelvis",), sct.Pelvis),
        (("bone", "bones"), sct.Bone),
        (("muscle", "muscles"), sct.Muscle),
        (("skin",), sct.Skin),
    ]
    return findings, organs


def segment_property_codes(label: str) -> tuple:
    """(segmented property category, segmented property type) SNOMED CT codes for a segment label.

    A finding word in the label (tumour, nodule, lesion, ...) wins over an organ word ("liver
    tumour" is a neoplasm); an organ word gives that organ under "Anatomical Structure"; any other
    label gives the generic pair ("Tissue", "Tissue"). Words are matched whole, ignoring case and
    accents.
    """
    from pydicom.sr.codedict import codes

    # Accents are dropped first so that "lésion" or "Tumör" match their plain spelling.
    plain = unicodedata.normalize("NFKD", str(label)).encode("ascii", "ignore").decode("ascii")
    text = " " + " ".join(re.findall(r"[a-z]+", plain.lower())) + " "
    findings, organs = _code_tables()
    for words, code in findings:
        if any(f" {word} " in text for word in words):
            return codes.SCT.MorphologicallyAbnormalStructure, code
    for words, code in organs:
        if any(f" {word} " in text for word in words):
            return codes.SCT.AnatomicalStructure, code
    return codes.SCT.Tissue, codes.SCT.Tissue


# Where a prompt's structure ends: "A round polyp in the colonoscopy image." names "round polyp".
_PROMPT_CONTEXT = re.compile(r"\s+(?:in|on|of|within|at)\s+(?:the|a|an|this)\s+\S.*$", re.IGNORECASE | re.DOTALL)
_LEADING_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)


def structure_label(prompt: str) -> str:
    """The structure a text prompt names, as a segment label: the words before the prompt's
    context ("... in the brain MRI image"), without a leading article or the final full stop,
    first letter capitalised. "A round polyp in the colonoscopy image." -> "Round polyp";
    "liver" -> "Liver". A prompt that leaves nothing (only context words) is kept whole."""
    text = " ".join(str(prompt if prompt is not None else "").split()).rstrip(" .")
    core = _LEADING_ARTICLE.sub("", _PROMPT_CONTEXT.sub("", text)).strip(" .,;:")
    core = core or text
    return core[:1].upper() + core[1:]


def _long_string(value, what: str) -> str:
    """``value`` as a DICOM LO: one line, no backslash (DICOM's value separator), at most 64
    bytes in UTF-8 (longer text is cut, not refused: a prompt is often longer than a label).
    The standard counts characters, but pydicom and some archives check encoded bytes, so the
    stricter bound is kept, never cutting a character in two."""
    text = " ".join(str(value if value is not None else "").replace("\\", "/").split())
    if not text:
        raise VolumeWriteError(f"The {what} is empty; a DICOM-SEG needs one.")
    return text.encode("utf-8")[:_LO_MAX].decode("utf-8", "ignore").rstrip()


# -- DICOM-SEG: writing ---------------------------------------------------------------------------
def _is_dicom_sourced(volume: ScanVolume) -> bool:
    # The reader marks series "dicom" and enhanced multi-frame files "dicom-multiframe".
    return bool(volume.dicom_headers) and str(volume.source_format).startswith("dicom")


def _dicom_headers(volume: ScanVolume) -> list:
    if not _is_dicom_sourced(volume):
        raise VolumeWriteError("DICOM-SEG needs a DICOM-sourced volume; export NIfTI instead.")
    return list(volume.dicom_headers)


def _with_shared_geometry(source):
    """``source`` (a multi-frame header), or a copy of it whose shared functional groups hold the
    plane orientation and pixel measures. highdicom reads both from the shared groups only; an
    enhanced file may repeat them per frame instead, which is equivalent when every frame has the
    same values (true of any file a volume was read from: its frames are parallel and regular)."""
    import copy

    from pydicom.dataset import Dataset

    shared = source.SharedFunctionalGroupsSequence[0] if source.get("SharedFunctionalGroupsSequence") else Dataset()
    per_frame = source.PerFrameFunctionalGroupsSequence
    missing = [macro for macro in ("PlaneOrientationSequence", "PixelMeasuresSequence") if macro not in shared]
    if not missing:
        return source
    completed = copy.deepcopy(source)
    if not completed.get("SharedFunctionalGroupsSequence"):
        completed.SharedFunctionalGroupsSequence = [Dataset()]
    for macro in missing:
        values = [item[macro].value[0] for item in per_frame if macro in item]
        if len(values) != len(per_frame) or any(value != values[0] for value in values[1:]):
            raise VolumeWriteError(
                f"The multi-frame source's frames do not share one {macro[:-len('Sequence')]}; "
                "a DICOM-SEG cannot be built on it.")
        completed.SharedFunctionalGroupsSequence[0][macro] = copy.deepcopy(per_frame[0][macro])
        for item in completed.PerFrameFunctionalGroupsSequence:
            if macro in item:
                del item[macro]
    return completed


def _multiframe_source(volume: ScanVolume, headers: list):
    """The single enhanced multi-frame source file's header and the volume's frame numbers."""
    source = headers[0]
    if any(header.SOPInstanceUID != source.SOPInstanceUID for header in headers[1:]):
        raise VolumeWriteError(
            "The volume's frame numbers say it comes from one multi-frame file, but its headers "
            "belong to several files; it cannot be referenced frame by frame.")
    if "NumberOfFrames" not in source or "PerFrameFunctionalGroupsSequence" not in source:
        raise VolumeWriteError(
            "The volume's multi-frame source header lacks its frame list (NumberOfFrames, "
            "Per-frame Functional Groups); a DICOM-SEG cannot reference its frames.")
    frame_numbers = [int(number) for number in volume.frame_numbers]
    total = int(source.NumberOfFrames)
    if len(frame_numbers) != volume.shape[2] or len(set(frame_numbers)) != len(frame_numbers) \
            or not all(1 <= number <= total for number in frame_numbers):
        raise VolumeWriteError(
            f"The volume's frame numbers do not name {volume.shape[2]} distinct frames of its "
            f"{total}-frame source file; a DICOM-SEG cannot reference them.")
    return source, frame_numbers, total


def _check_mask(mask, volume: ScanVolume) -> np.ndarray:
    mask = np.asarray(mask)
    _check_on_grid(mask, volume, "mask")
    if mask.dtype == np.bool_:
        return mask
    if mask.dtype.kind in "iu" and np.isin(mask, (0, 1)).all():
        return mask.astype(bool)
    raise VolumeWriteError(
        f"The mask must be boolean (or 0/1); it holds {mask.dtype} values. "
        "Threshold probabilities first, or pass them as `fractional`.")


def _check_probabilities(fractional, volume: ScanVolume) -> np.ndarray:
    values = np.asarray(fractional)
    _check_on_grid(values, volume, "probability volume")
    if values.dtype.kind not in "fiub":
        raise VolumeWriteError(f"Probabilities must be numbers between 0 and 1; they are {values.dtype}.")
    values = values.astype(np.float32, copy=False)
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
        raise VolumeWriteError("Probabilities must be finite numbers between 0 and 1.")
    return values


def _scrub_identifiers(dataset) -> None:
    for keyword in _TYPE2_IDENTIFIERS:
        if keyword in dataset:
            setattr(dataset, keyword, "")
    for keyword in _OPTIONAL_IDENTIFIERS:
        if keyword in dataset:
            delattr(dataset, keyword)


def _software_version() -> str:
    try:
        from importlib.metadata import version

        return version("medclipseg")
    except Exception:  # running from a source tree that is not installed
        return "unknown"


def write_dicom_seg(volume: ScanVolume, mask, path, *, segment_label: str, model_name: str,
                    model_version: str, algorithm_type: str = "AUTOMATIC",
                    series_description: Optional[str] = None, content_creator: Optional[str] = None,
                    fractional=None, series_number: int = DEFAULT_SEG_SERIES_NUMBER,
                    instance_number: int = 1) -> Path:
    """Write a one-segment DICOM-SEG of ``mask`` (boolean, on ``volume``'s file grid) to ``path``.

    ``volume`` must come from DICOM (its de-identified headers are the SEG's source images).
    ``segment_label`` names the structure (the prompt's target; cut to DICOM's 64-byte limit);
    ``model_name`` / ``model_version`` fill the Algorithm Identification; ``algorithm_type`` is
    AUTOMATIC (the model alone) or SEMIAUTOMATIC (edited by a person). ``content_creator`` is
    the name of the person responsible (DICOM PN, e.g. "Doe^Jane"), if any.

    ``fractional``: instead of ``mask`` (pass ``mask=None``), probabilities in 0..1 on the file
    grid, written as a FRACTIONAL (PROBABILITY) SEG in 1/255 steps.

    Every k slice gives one frame (empty ones too), stored in highdicom's spatial order (see
    the module docstring). Returns the path written.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    path = Path(path)
    headers = _dicom_headers(volume)
    if len(headers) != volume.shape[2] and volume.frame_numbers is None:
        raise VolumeWriteError(
            f"The volume has {volume.shape[2]} slices but {len(headers)} DICOM headers; "
            "a DICOM-SEG needs one header per slice.")
    if (mask is None) == (fractional is None):
        raise VolumeWriteError("Give either a binary mask or probabilities (`fractional`), not both.")
    if fractional is not None:
        frames_kji = np.transpose(_check_probabilities(fractional, volume), (2, 1, 0))
        segmentation_type = hd.seg.SegmentationTypeValues.FRACTIONAL
    else:
        frames_kji = np.transpose(_check_mask(mask, volume), (2, 1, 0))
        segmentation_type = hd.seg.SegmentationTypeValues.BINARY
    kind = str(algorithm_type).strip().upper()
    if kind not in _ALGORITHM_TYPES:
        raise VolumeWriteError(
            f"The algorithm type must be AUTOMATIC or SEMIAUTOMATIC, not {algorithm_type!r}.")
    label = _long_string(segment_label, "segment label")
    category, property_type = segment_property_codes(label)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=category,
        segmented_property_type=property_type,
        algorithm_type=kind,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=_long_string(model_name, "model name"),
            version=_long_string(model_version, "model version"),
            family=codes.DCM.ArtificialIntelligence,
        ),
    )

    layout = {}
    if volume.frame_numbers is None:
        source_images = headers
        # highdicom pairs frame i with source_images[i]: the headers are already in k order.
        pixel_array = frames_kji
    else:
        source, frame_numbers, total = _multiframe_source(volume, headers)
        source = _with_shared_geometry(source)
        source_images = [source]
        if sorted(frame_numbers) == list(range(1, total + 1)):
            # Frame i of the pixel array must be frame i + 1 of the source: file frame order.
            pixel_array = np.empty((total,) + frames_kji.shape[1:], dtype=frames_kji.dtype)
            pixel_array[np.asarray(frame_numbers) - 1] = frames_kji
        else:
            # The volume uses some of the file's frames only (another stack, echo or time point
            # holds the rest): give each k slice's position and let highdicom match the frames.
            pixel_array = frames_kji
            layout["plane_positions"] = [
                hd.PlanePositionSequence(
                    coordinate_system="PATIENT",
                    image_position=source.PerFrameFunctionalGroupsSequence[number - 1]
                    .PlanePositionSequence[0].ImagePositionPatient)
                for number in frame_numbers]
    series_text = series_description if series_description is not None else f"MedCLIPSeg {label}"
    options = {}
    if content_creator:
        options["content_creator_name"] = str(content_creator)
    try:
        segmentation = hd.seg.Segmentation(
            source_images=source_images,
            pixel_array=np.ascontiguousarray(pixel_array),
            segmentation_type=segmentation_type,
            segment_descriptions=[description],
            series_instance_uid=hd.UID(),
            series_number=int(series_number),
            sop_instance_uid=hd.UID(),
            instance_number=int(instance_number),
            manufacturer=SEG_MANUFACTURER,
            manufacturer_model_name=SEG_MANUFACTURER_MODEL_NAME,
            software_versions=_software_version(),
            device_serial_number=SEG_DEVICE_SERIAL_NUMBER,
            max_fractional_value=_MAX_FRACTIONAL_VALUE,
            omit_empty_frames=False,
            content_description=_long_string(f"{label} by {model_name} {model_version}", "content description"),
            series_description=_long_string(series_text, "series description"),
            # UTF-8, so a label with accents is stored as typed.
            specific_character_set="ISO_IR 192",
            **layout,
            **options,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        raise VolumeWriteError(
            f"highdicom could not build the DICOM-SEG from this volume's headers ({error}).") from error
    _scrub_identifiers(segmentation)
    with _atomic_destination(path, ".dcm") as temporary:
        segmentation.save_as(str(temporary), enforce_file_format=True)
    return path


# -- DICOM-SEG: reading ---------------------------------------------------------------------------
def read_dicom_seg_mask(path, volume: ScanVolume, *, segment_number: Optional[int] = None) -> np.ndarray:
    """The mask a DICOM-SEG at ``path`` holds, as a boolean array on ``volume``'s file grid.

    Each frame is placed at the k slice whose header has the SOP instance (or, for a multi-frame
    source, the frame number) the frame references; geometry is not guessed. ``segment_number``
    picks one segment; by default all segments are united. A FRACTIONAL SEG gives the voxels
    whose probability is at least 0.5. Refuses, in words, a file that is not a SEG and a SEG
    drawn on another scan.
    """
    import highdicom as hd

    headers = volume.dicom_headers
    if not _is_dicom_sourced(volume):
        raise VolumeWriteError("A DICOM-SEG can only be read onto a DICOM-sourced volume.")
    try:
        segmentation = hd.seg.segread(str(path))
    except Exception as error:  # pydicom and highdicom raise many types for a foreign file
        raise VolumeWriteError(
            f"{Path(path).name} is not a readable DICOM-SEG ({type(error).__name__}: {error}).") from None
    if str(segmentation.SOPClassUID) != SEGMENTATION_SOP_CLASS_UID:
        raise VolumeWriteError(f"{Path(path).name} is not a DICOM Segmentation (SOP class "
                               f"{segmentation.SOPClassUID}).")
    source_frame_of_reference = getattr(headers[0], "FrameOfReferenceUID", None)
    if getattr(segmentation, "FrameOfReferenceUID", None) != source_frame_of_reference:
        raise VolumeWriteError(f"{Path(path).name} was drawn on another scan (its frame of reference "
                               "differs from this volume's).")
    columns, rows, slices = volume.shape
    if (int(segmentation.Rows), int(segmentation.Columns)) != (rows, columns):
        raise VolumeWriteError(
            f"{Path(path).name} has {segmentation.Rows} x {segmentation.Columns} frames; this volume's "
            f"slices are {rows} x {columns}.")

    if volume.frame_numbers is None:
        slice_of = {str(header.SOPInstanceUID): k for k, header in enumerate(headers)}
    else:
        source_uid = str(headers[0].SOPInstanceUID)
        slice_of = {(source_uid, int(number)): k for k, number in enumerate(volume.frame_numbers)}

    fractional = str(segmentation.SegmentationType) == "FRACTIONAL"
    threshold = (int(getattr(segmentation, "MaximumFractionalValue", _MAX_FRACTIONAL_VALUE)) / 2.0
                 if fractional else 0.5)
    stored = segmentation.pixel_array
    if stored.ndim == 2:
        stored = stored[np.newaxis]
    # A one-segment SEG may name its segment once, in the shared functional groups.
    shared = segmentation.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in segmentation else {}
    mask = np.zeros(volume.shape, dtype=bool)
    for index, item in enumerate(segmentation.PerFrameFunctionalGroupsSequence):
        identification = item.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
        number = int(identification[0].ReferencedSegmentNumber) if identification else 1
        if segment_number is not None and number != int(segment_number):
            continue
        k = _referenced_slice(item, slice_of, volume.frame_numbers is not None)
        if k is None:
            raise VolumeWriteError(
                f"Frame {index + 1} of {Path(path).name} references an image that is not one of this "
                "volume's slices; the SEG was drawn on another series.")
        mask[:, :, k] |= stored[index].T >= threshold
    return mask


def _referenced_slice(item, slice_of: dict, multiframe: bool) -> Optional[int]:
    """The k slice a SEG frame's Derivation Image Sequence points to, or None."""
    from pydicom.multival import MultiValue

    for derivation in item.get("DerivationImageSequence", []):
        for source in derivation.get("SourceImageSequence", []):
            uid = str(source.ReferencedSOPInstanceUID)
            if not multiframe:
                if uid in slice_of:
                    return slice_of[uid]
                continue
            numbers = source.get("ReferencedFrameNumber")
            if numbers is None:
                continue
            # One frame number reads as a single IS, several as a MultiValue.
            for number in (numbers if isinstance(numbers, MultiValue) else [numbers]):
                if (uid, int(number)) in slice_of:
                    return slice_of[(uid, int(number))]
    return None
