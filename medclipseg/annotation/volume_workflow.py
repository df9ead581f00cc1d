"""The review workflow of volume cases, shared by the app, its API and scripts.

:class:`medclipseg.annotation.service.AnnotationService` delegates here for volumes: reading a scan
(NIfTI, DICOM series) with refusals in words, predicting it slice by slice under the service's
model lock, storing it as one case, serving one slice at a time (never the whole float volume),
assembling a volume mask from edited slices, and writing masks back on the scan's own grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from medclipseg.annotation import volume_files
from medclipseg.annotation.errors import StorageError

# What a volume upload may be named: NIfTI files and zips (of a DICOM series).
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".zip")


@dataclass
class VolumeSegmentResult:
    case: Optional[object]            # store.Case; None when not added to the queue
    prediction_id: Optional[int]
    prediction: object                # inference.volume.VolumePrediction
    volume: object                    # io.volumes.ScanVolume


@dataclass
class SliceView:
    """One display slice of a volume case, as the editor shows it."""

    case_id: int
    prediction_id: Optional[int]
    index: int
    depth: int
    scan: np.ndarray                  # float32 rows x columns, modality units
    image_rgb: np.ndarray             # uint8 rows x columns x 3, windowed
    probability: np.ndarray           # float32 (from the 8-bit map)
    entropy: np.ndarray
    mask: np.ndarray                  # bool: the mask the annotator starts from on this slice
    start: str                        # "draft", "version" or "prediction"
    window: tuple
    spacing: tuple                    # mm between slices, rows, columns
    strip: list                       # per-slice uncertainty (band entropy), display order
    plane: str
    modality: str


def is_volume_name(name) -> bool:
    lowered = str(name or "").lower()
    return lowered.endswith(VOLUME_SUFFIXES)


def read_scan(source, *, name: Optional[str] = None):
    """A NIfTI file, a DICOM series folder / zip / file list as a ScanVolume; refusals as RequestError."""
    from medclipseg.annotation.service import RequestError
    from medclipseg.io.volumes import VolumeReadError, read_volume

    if source is None or (isinstance(source, str) and not source.strip()):
        raise RequestError("No scan given: upload a NIfTI file (.nii or .nii.gz) or a zip of one DICOM series.")
    try:
        return read_volume(source, name=name)
    except VolumeReadError as exc:
        raise RequestError(str(exc)) from None


def segment_volume(service, source, prompt: str, *, name: Optional[str] = None, num_samples: Optional[int] = None,
                   threshold: float = 0.5, seed: Optional[int] = 0, window=None, origin: str = "upload",
                   annotator: Optional[str] = None, add_to_queue: bool = True, batch: Optional[str] = None,
                   progress: Optional[Callable[[float, str], None]] = None) -> VolumeSegmentResult:
    """Read, predict slice by slice, then (``add_to_queue``) store the scan as one volume case."""
    from medclipseg.annotation.service import check_samples, check_threshold
    from medclipseg.inference import zerogpu
    from medclipseg.io.prompts import validate_prompt

    prompt = validate_prompt(prompt)
    samples = service.volume_samples if num_samples is None else check_samples(num_samples)
    threshold = check_threshold(threshold)
    volume = source if hasattr(source, "to_display") else read_scan(source, name=name)
    predictor = service.predictor

    def step(done, total):
        if progress:
            progress(0.1 + 0.8 * done / max(total, 1), f"Slice {done} of {total}")

    with service.model_lock:
        prediction = zerogpu.predict_volume(predictor, volume, prompt, num_samples=samples, threshold=threshold,
                                            seed=seed, window=window, progress=step)
    if not add_to_queue:
        return VolumeSegmentResult(case=None, prediction_id=None, prediction=prediction, volume=volume)
    if progress:
        progress(0.95, "Saving the case")
    case, prediction_id = service.store.add_volume_case_with_prediction(
        volume, prediction, prompt=prompt, original_name=name or volume.name or "volume", source=origin, batch=batch)
    if annotator:
        service.store.claim(case.id, annotator=annotator)
    return VolumeSegmentResult(case=case, prediction_id=prediction_id, prediction=prediction, volume=volume)


def rescore_volume(service, predictor, case, *, num_samples: int):
    """A stored volume case predicted again (by the current model); returns (prediction id, prediction)."""
    from medclipseg.inference import zerogpu

    volume = service.store.load_volume(case.id)
    geometry = service.store.volume_geometry(case.id)
    with service.model_lock:
        prediction = zerogpu.predict_volume(predictor, volume, case.prompt, num_samples=num_samples, seed=0,
                                            window=geometry.window)
    return service.store.add_volume_prediction(case.id, prediction, volume=volume), prediction


def start_mask(service, case_id: int, annotator: Optional[str]) -> tuple:
    """(mosaic mask, start, base version, reviewed slices) the annotator starts from: their draft, else
    the latest saved version, else the model's mask."""
    store = service.store
    if annotator:
        draft = store.draft(case_id, annotator)
        if draft is not None:
            return draft.mask, "draft", draft.base_version, list(draft.reviewed_slices)
    latest = store.latest_correction(case_id, annotator)
    if latest is not None:
        import json

        reviewed = json.loads(latest.get("reviewed_slices") or "[]")
        return store.load_mask(latest["mask_path"]), "version", int(latest["version"]), reviewed
    prediction_id = store.latest_prediction_id(case_id)
    if prediction_id is None:
        case = store.get_case(case_id)
        return np.zeros((case.height, case.width), bool), "prediction", None, []
    return store.load_mask(store.prediction_row(prediction_id)["mask_path"]), "prediction", None, []


def slice_view(service, case_id: int, index: Optional[int] = None, *, annotator: Optional[str] = None,
               window: Optional[Sequence[float]] = None, mask: Optional[np.ndarray] = None,
               start: Optional[str] = None) -> SliceView:
    """One slice of a volume case: scan (windowed), maps and the start mask (``mask``: a mosaic the
    caller holds already, e.g. the editor's draft, saves reading it again)."""
    from medclipseg.annotation.service import RequestError
    from medclipseg.io.volumes import window_to_uint8

    store = service.store
    case = store.get_case(case_id)
    if not case.is_volume:
        raise RequestError(f"Case #{case.id} is an image, not a volume.")
    geometry = store.volume_geometry(case.id)
    index = case.start_slice or 0 if index is None else int(index)
    if not 0 <= index < geometry.depth:
        raise RequestError(f"Slice {index} does not exist; this volume has slices 0 to {geometry.depth - 1}.")
    window = tuple(geometry.window) if window is None else (float(window[0]), float(window[1]))
    if not window[1] > 0:
        raise RequestError("The window width must be positive.")
    scan = store.volume_slice(case.id, index)
    grey = window_to_uint8(scan, window)
    prediction_id = store.latest_prediction_id(case.id)
    if prediction_id is not None:
        maps = store.prediction_slice(prediction_id, index)
        probability, entropy = maps["probability"], maps["entropy"]
        strip = [float(v) for v in store.slice_scores(prediction_id).get("band_entropy", [])]
    else:
        probability = np.zeros(scan.shape, np.float32)
        entropy = np.zeros(scan.shape, np.float32)
        strip = []
    if mask is None:
        mask, start, _, _ = start_mask(service, case.id, annotator)
    return SliceView(case_id=case.id, prediction_id=prediction_id, index=index, depth=geometry.depth, scan=scan,
                     image_rgb=np.repeat(grey[..., None], 3, axis=2), probability=probability, entropy=entropy,
                     mask=volume_files.mosaic_slice(mask, geometry, index).astype(bool), start=start or "prediction",
                     window=window, spacing=geometry.display_spacing, strip=strip, plane=geometry.plane,
                     modality=geometry.modality)


def replace_slice(service, case_id: int, mosaic_mask: np.ndarray, index: int, slice_mask: np.ndarray) -> np.ndarray:
    """The volume mask with one slice replaced (a copy)."""
    geometry = service.store.volume_geometry(case_id)
    slice_mask = np.asarray(slice_mask, dtype=bool)
    if slice_mask.shape != (geometry.rows, geometry.columns):
        raise StorageError(f"A slice mask of this volume is {geometry.rows}x{geometry.columns}; got "
                           f"{slice_mask.shape[0]}x{slice_mask.shape[1] if slice_mask.ndim > 1 else 0}.")
    out = np.array(mosaic_mask, dtype=bool, copy=True)
    out[index * geometry.rows:(index + 1) * geometry.rows] = slice_mask
    return out


def mask_on_file_grid(service, case_id: int, mosaic_mask: np.ndarray) -> tuple:
    """(ScanVolume, uint8 mask on the scan's own grid) for a mosaic mask of the case."""
    volume = service.store.load_volume(case_id)
    geometry = service.store.volume_geometry(case_id)
    display = volume_files.unmosaic(np.asarray(mosaic_mask, dtype=bool), geometry)
    return volume, np.ascontiguousarray(volume.from_display(display, plane=geometry.plane)).astype(np.uint8)


def read_mask_nifti(service, case_id: int, path, *, name: Optional[str] = None) -> np.ndarray:
    """A mask sent as NIfTI, on the case's grid (same shape and affine), as the case's mosaic mask.
    Anything else is refused in words, nothing written."""
    from medclipseg.annotation.service import RequestError
    from medclipseg.io.volumes import VolumeReadError, read_nifti

    shown = name or Path(str(path)).name
    volume = service.store.load_volume(case_id)
    geometry = service.store.volume_geometry(case_id)
    try:
        sent = read_nifti(path, name=shown)
    except VolumeReadError as exc:
        raise RequestError(f"The mask {exc}") from None
    if sent.shape != volume.shape:
        raise RequestError(f"The mask '{shown}' has shape {' x '.join(map(str, sent.shape))}, but case #{case_id}'s "
                           f"scan is {' x '.join(map(str, volume.shape))}; send it on the served grid.")
    if not np.allclose(sent.affine, volume.affine, atol=1e-3):
        raise RequestError(f"The mask '{shown}' has another affine than case #{case_id}'s scan (it would lie "
                           "elsewhere in the patient); send it on the served grid with the served affine.")
    values = sent.array
    if not np.all(np.isin(np.unique(values), (0, 1, 255))):
        raise RequestError(f"The mask '{shown}' must hold 0 (background) and 1 (foreground) only.")
    return volume_files.mosaic(volume.to_display(values > 0, plane=geometry.plane))


def scan_nifti_file(service, case_id: int, folder: Path) -> Path:
    """The case's scan as .nii.gz (modality units, its own grid and affine) in ``folder``."""
    import nibabel as nib

    volume = service.store.load_volume(case_id)
    path = Path(folder) / f"case{int(case_id):06d}.nii.gz"
    nib.save(volume.nifti_image(), str(path))
    return path


def mask_nifti_file(service, case_id: int, mosaic_mask: np.ndarray, path: Path) -> Path:
    import nibabel as nib

    volume, mask = mask_on_file_grid(service, case_id, mosaic_mask)
    nib.save(volume.nifti_image(mask, dtype=np.uint8), str(path))
    return path


def slices_saved_since(service, case_id: int, base_version: Optional[int], annotator: Optional[str] = None) -> list:
    """Display slices that versions saved after ``base_version`` (None: any version) by someone other
    than ``annotator`` name as reviewed: propagation must not write over them, and the annotator
    should see them before saving (their save would be refused as a conflict anyway)."""
    import json

    slices = set()
    for row in service.store.versions_after(case_id, base_version):
        if annotator and row["annotator"] == annotator:
            continue
        slices.update(int(i) for i in json.loads(row["reviewed_slices"] or "[]"))
    return sorted(slices)
