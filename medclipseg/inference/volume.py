"""Volume prediction: a 3-D scan segmented slice by slice by the 2-D model, with its uncertainty.

:func:`predict_volume` slices a :class:`medclipseg.io.volumes.ScanVolume` along its
``slice_plane`` in the display convention (an exact re-ordering of the voxels, so the same scan in
any voxel order gives the same slices), windows every slice with ONE window for the whole volume,
and runs each slice through the same pre-processing and Monte-Carlo sampling as
:meth:`Predictor.predict`. Several slices share a forward pass (``batch_slices``), each with
``chunk`` samples folded into the batch; the prompt is tokenised once and its ids repeated.

Window
    CT: a preset of :data:`medclipseg.io.dicom.CT_WINDOW_PRESETS` (Hounsfield units) or
    ``(center, width)`` in HU; default "Soft tissue". Other modalities (MR, unknown): the 0.5th and
    99.5th percentiles (``realdata.DEFAULT_PERCENTILES``) of the voxels above the volume's minimum
    (a skull-stripped or masked scan's background is its minimum), the rule
    :mod:`medclipseg.datasets.realdata` windows the real T1 by; or ``(center, width)`` in the
    volume's own units. Slices are windowed with :func:`medclipseg.io.volumes.window_to_uint8`, as
    the editor shows them, so the model sees what the annotator sees.

Determinism
    With a seed, display slice ``s`` draws its noise from its own generator seeded with
    :func:`slice_seed` ``(seed, s)``: which slices share a forward pass does not change a slice's
    samples, and ``predictor.predict(slice, seed=slice_seed(seed, s))`` draws the same ones. With
    ``batch_slices=1`` a slice's maps equal that call's exactly; larger batches change the float
    arithmetic of the matrix products (CPU kernels block by batch size), by about 1e-5 in a logit.

Maps
    ``probability``, ``entropy`` and ``mutual_information`` are float16 volumes on the file's own
    grid (views of display-order arrays, no copies): half the memory of float32 and at most 2.5e-4
    off the float32 maps (11-bit significand over values in [0, 1)), below the 8-bit storage step.
    ``mask = probability > threshold`` on those stored values, so :meth:`VolumePrediction.with_threshold`
    reproduces a prediction made at another threshold exactly, without the model.

Scores
    ``slice_scores``: for every display slice, the numbers
    :func:`medclipseg.inference.uncertainty.image_scores` gives a 2-D prediction (band entropy,
    mean entropy, foreground fraction, expected Dice miss, ...), as arrays in display order.
    ``scores``: the same functions over the whole volume, every voxel weighing one. The regions
    stay 2-D (the boundary band and acquisition region of each slice, as the annotator sees them),
    so a volume mean is the mean over the union of the slices' regions: e.g. ``band_entropy`` is
    sum over slices of H summed over U_s, divided by sum of |U_s|; ``expected_dice`` uses the
    volume's sums of p and p*m; ``top_entropy`` averages the k highest-entropy voxels of the
    volume with k from the volume's voxel count. Added: ``start_slice`` (the display slice with the
    highest band entropy, where review starts; the highest mean entropy when no slice has a band, the
    middle slice when the model is certain everywhere), ``max_slice_band_entropy`` and ``foreground_slices``.

Clean-up (``cleanup``)
    None (default): the thresholded mask as is. ``"largest"``: only the largest 3-D connected
    component (26-connectivity) is kept. An int N: components under N voxels are dropped. Done in
    display order, so ties between equal components resolve the same for every voxel order.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from medclipseg.inference import acceleration, batching
from medclipseg.inference.predictor import BOUNDARY_BAND_224, CPU_ROWS_PER_PASS, resize_map
from medclipseg.inference.transforms import preprocess_bgr
from medclipseg.inference.uncertainty import (
    MAX_BINARY_ENTROPY,
    MonteCarloAccumulator,
    acquisition_region,
    boundary_band,
    image_scores,
    top_pixel_count,
)

__all__ = [
    "CLEANUP_LARGEST",
    "DEFAULT_CT_WINDOW",
    "MAP_NAMES",
    "MAP_DTYPE",
    "QUANTISATION_MAX_ERROR",
    "VolumePrediction",
    "clean_mask",
    "compact_maps",
    "expand_maps",
    "percentile_window",
    "predict_volume",
    "slice_seed",
    "volume_window",
]

MAP_NAMES = ("probability", "entropy", "mutual_information")
# The percentile window reads at most this many voxels (an even stride through the volume): exact
# for volumes up to this size, and a copy of 64 MB at most instead of one as large as the scan.
PERCENTILE_SAMPLE_VOXELS = 16_000_000
# Images (slices x samples) per forward pass on a CPU by default (the predictor's rows_per_pass).
IMAGES_PER_PASS = CPU_ROWS_PER_PASS
MAP_DTYPE = np.float16
DEFAULT_CT_WINDOW = "Soft tissue"
CLEANUP_LARGEST = "largest"
# Entropies above this count as uncertain (image_scores' default: half the maximum binary entropy).
UNCERTAIN_ENTROPY = 0.5 * MAX_BINARY_ENTROPY
# 8-bit storage: probability * 255, entropy and mutual information as a fraction of ln 2 * 255
# (the annotation store's rule); rounding to the nearest step is off by at most half a step.
_QUANTISATION_SCALE = {"probability": 1.0, "entropy": MAX_BINARY_ENTROPY, "mutual_information": MAX_BINARY_ENTROPY}
QUANTISATION_MAX_ERROR = {name: scale / 510.0 for name, scale in _QUANTISATION_SCALE.items()}


# -- window ---------------------------------------------------------------------------------------
def _percentiles_in_place(values: np.ndarray, percentiles: Sequence[float]) -> list:
    """np.percentile(values, percentiles) (linear rule, float64 arithmetic) of a 1-D float array,
    partitioning ``values`` in place instead of copying it: a volume's voxels are not doubled."""
    count = values.size
    quantiles = np.asarray(percentiles, dtype=np.float64) / 100.0
    positions = (count - 1) * quantiles  # numpy's virtual index of the linear rule
    lower = np.floor(positions).astype(np.int64)
    upper = np.minimum(lower + 1, count - 1)
    values.partition(np.unique(np.concatenate([lower, upper])))
    result = []
    for position, below, above in zip(positions, lower, upper):
        a, b = float(values[below]), float(values[above])
        fraction = float(position - below)
        # numpy's lerp: from the nearer end, so that fraction 1 gives b exactly.
        difference = b - a
        result.append(b - difference * (1.0 - fraction) if fraction >= 0.5 else a + difference * fraction)
    return result


def percentile_window(values: np.ndarray, percentiles: Optional[Sequence[float]] = None) -> tuple:
    """(center, width) spanning the given percentiles (default: realdata's 0.5 and 99.5) of the
    voxels above the minimum, the one window of a non-CT volume (module docstring). A volume of
    more than PERCENTILE_SAMPLE_VOXELS voxels is read with an even stride (about that many)."""
    from medclipseg.datasets.realdata import DEFAULT_PERCENTILES

    low_pct, high_pct = (float(p) for p in (percentiles or DEFAULT_PERCENTILES))
    if not 0 <= low_pct < high_pct <= 100:
        raise ValueError(f"Percentiles must satisfy 0 <= low < high <= 100; got {low_pct:g} and {high_pct:g}.")
    values = np.asarray(values)
    minimum = float(values.min())
    flat = values.reshape(-1)
    stride = -(-flat.size // PERCENTILE_SAMPLE_VOXELS)  # ceil: 1 (every voxel) up to the sample size
    if stride > 1:
        flat = flat[::stride]
    selected = flat[flat > minimum]
    if selected.size == 0:
        return minimum, 1.0  # a constant volume: any positive width shows it as one grey
    low, high = _percentiles_in_place(selected.astype(np.float32, copy=False), (low_pct, high_pct))
    if not high > low:
        return low, 1.0
    return (low + high) / 2.0, high - low


def volume_window(volume, window: Union[None, str, Sequence[float]] = None) -> tuple:
    """The (center, width) a volume is windowed with, in its own units (module docstring)."""
    from medclipseg.io.dicom import CT_WINDOW_PRESETS

    is_ct = (volume.modality or "").upper() == "CT"
    if window is None:
        return tuple(CT_WINDOW_PRESETS[DEFAULT_CT_WINDOW]) if is_ct else percentile_window(volume.array)
    if isinstance(window, str):
        if not is_ct:
            kind = volume.modality or "of unknown modality"
            raise ValueError(f"Window presets are in Hounsfield units and apply to CT; this volume is {kind}. "
                             "Give (center, width) in its own units, or no window for its percentile window.")
        presets = {name.lower(): value for name, value in CT_WINDOW_PRESETS.items()}
        if window.strip().lower() not in presets:
            raise ValueError(f"Unknown CT window {window!r}; use one of {', '.join(CT_WINDOW_PRESETS)} "
                             "or (center, width) in HU.")
        return tuple(float(v) for v in presets[window.strip().lower()])
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"A window is a preset name or (center, width); got {window!r}.") from None
    if not (math.isfinite(center) and math.isfinite(width) and width > 0):
        raise ValueError(f"The window's center must be finite and its width positive; got ({center:g}, {width:g}).")
    return center, width


# -- sampling -------------------------------------------------------------------------------------
def slice_seed(seed: int, index: int) -> int:
    """The seed of display slice ``index``'s generator for a volume predicted with ``seed``."""
    state = np.random.SeedSequence([int(seed) % 2 ** 64, int(index)]).generate_state(2, np.uint32)
    return (int(state[0]) << 32 | int(state[1])) & (2 ** 63 - 1)


def _slice_pixels(scan_slice: np.ndarray, window: tuple, size: int) -> torch.Tensor:
    """One display slice -> the model's input, as a grey 2-D image goes through predict."""
    from medclipseg.io.volumes import window_to_uint8

    grey = window_to_uint8(scan_slice, window)
    return preprocess_bgr(np.repeat(grey[..., None], 3, axis=2), size)


# -- clean-up and scores --------------------------------------------------------------------------
def _check_cleanup(cleanup) -> None:
    if cleanup is None or cleanup == CLEANUP_LARGEST:
        return
    if isinstance(cleanup, bool) or not isinstance(cleanup, (int, np.integer)) or cleanup < 1:
        raise ValueError(f"cleanup must be None, {CLEANUP_LARGEST!r} or a positive number of voxels; got {cleanup!r}.")


def clean_mask(mask: np.ndarray, cleanup) -> np.ndarray:
    """The 3-D clean-up of a mask (module docstring); the mask itself when ``cleanup`` is None."""
    from scipy import ndimage

    _check_cleanup(cleanup)
    if cleanup is None:
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0  # background
    if cleanup == CLEANUP_LARGEST:
        keep = np.zeros(count + 1, dtype=bool)
        keep[int(np.argmax(sizes))] = True  # ties: the first in scan order
    else:
        keep = sizes >= int(cleanup)
        keep[0] = False
    return keep[labels]


def _top_mean_float16(values: np.ndarray, k: int) -> float:
    """The mean of the k largest values of a float16 volume, exactly, from a count of its 65,536 bit
    patterns taken slice by slice: no volume-sized temporary (a float16 value is its bit pattern)."""
    counts = np.zeros(1 << 16, dtype=np.int64)
    for plane in values:
        counts += np.bincount(np.ascontiguousarray(plane, dtype=np.float16).view(np.uint16).ravel(),
                              minlength=1 << 16)
    patterns = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)
    present = np.flatnonzero(counts)
    present = present[np.isfinite(patterns[present])]
    order = present[np.argsort(patterns[present], kind="stable")[::-1]]  # largest value first
    taken = np.minimum(counts[order], np.maximum(0, k - np.concatenate([[0], np.cumsum(counts[order])[:-1]])))
    total = int(taken.sum())
    return float(np.dot(taken, patterns[order]) / total) if total else 0.0


def _start_slice(band_entropy: np.ndarray, mean_entropy: np.ndarray, depth: int) -> int:
    """Where review starts: the slice of highest band entropy; when the model found nothing anywhere
    (no band), the slice of highest mean entropy; when it is certain everywhere, the middle slice."""
    if depth == 0:
        return 0
    for values in (band_entropy, mean_entropy):
        if float(np.max(values)) > 0:
            return int(np.argmax(values))
    return depth // 2


def _score_volume(probability: np.ndarray, entropy: np.ndarray, mutual_information: np.ndarray,
                  mask: np.ndarray, band_width: int) -> tuple:
    """(per-slice scores, volume scores) of display-order maps (module docstring)."""
    depth = probability.shape[0]
    per_slice: dict = {}
    totals = dict.fromkeys(("entropy", "mi", "fg", "fg_entropy", "fg_mi", "band", "band_entropy", "region",
                            "region_entropy", "region_mi", "uncertain", "p", "p_fg"), 0.0)
    for index in range(depth):
        p = probability[index].astype(np.float32)
        h = entropy[index].astype(np.float32)
        i = mutual_information[index].astype(np.float32)
        m = np.asarray(mask[index], dtype=bool)
        scores = image_scores(h, i, m, band_width, probability=p)
        for key, value in scores.items():
            if key != "boundary_band_px":
                per_slice.setdefault(key, np.zeros(depth, dtype=np.float64))[index] = value
        band = boundary_band(m, band_width)
        region = acquisition_region(m, p, band_width)
        totals["entropy"] += float(h.sum(dtype=np.float64))
        totals["mi"] += float(i.sum(dtype=np.float64))
        totals["fg"] += scores["foreground_pixels"]
        totals["fg_entropy"] += float(h[m].sum(dtype=np.float64))
        totals["fg_mi"] += float(i[m].sum(dtype=np.float64))
        totals["band"] += float(np.count_nonzero(band))
        totals["band_entropy"] += float(h[band].sum(dtype=np.float64))
        totals["region"] += float(np.count_nonzero(region))
        totals["region_entropy"] += float(h[region].sum(dtype=np.float64))
        totals["region_mi"] += float(i[region].sum(dtype=np.float64))
        totals["uncertain"] += float(np.count_nonzero(h > np.float32(UNCERTAIN_ENTROPY)))
        totals["p"] += scores["soft_foreground_pixels"]
        totals["p_fg"] += float(p[m].sum(dtype=np.float64))

    def ratio(numerator: float, denominator: float) -> float:
        return numerator / denominator if denominator > 0 else 0.0

    voxels = float(probability.size)
    expected_dice = (2.0 * totals["p_fg"] + 1.0) / (totals["p"] + totals["fg"] + 1.0)
    band_entropy = per_slice["band_entropy"]
    start = _start_slice(band_entropy, per_slice["mean_entropy"], depth)
    volume_scores = {
        "mean_entropy": totals["entropy"] / voxels,
        "mean_entropy_foreground": ratio(totals["fg_entropy"], totals["fg"]),
        "mean_entropy_boundary": ratio(totals["band_entropy"], totals["band"]),
        "mean_mutual_information": totals["mi"] / voxels,
        "mutual_information_foreground": ratio(totals["fg_mi"], totals["fg"]),
        "foreground_fraction": totals["fg"] / voxels,
        "foreground_pixels": int(totals["fg"]),
        "uncertain_fraction": totals["uncertain"] / voxels,
        "boundary_band_px": int(band_width),
        "band_entropy": ratio(totals["region_entropy"], totals["region"]),
        "band_mutual_information": ratio(totals["region_mi"], totals["region"]),
        "top_entropy": _top_mean_float16(entropy, top_pixel_count(entropy.size)),
        "expected_dice": expected_dice,
        "expected_dice_miss": 1.0 - expected_dice,
        "soft_foreground_pixels": totals["p"],
        "start_slice": start,
        "max_slice_band_entropy": float(band_entropy[start]) if depth else 0.0,
        "foreground_slices": int(np.count_nonzero(per_slice["foreground_pixels"])),
    }
    return per_slice, volume_scores


# -- the result -----------------------------------------------------------------------------------
@dataclass
class VolumePrediction:
    """A volume's prediction on the file's own grid ``[i, j, k]``: maps float16 (module docstring),
    mask bool. ``slice_scores`` and ``start_slice`` count display slices along ``slice_plane``;
    ``window`` is the (center, width) the slices were windowed with, in the volume's units."""

    probability: np.ndarray
    mask: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    scores: dict
    slice_scores: dict
    start_slice: int
    slice_plane: str
    window: tuple
    num_samples: int
    threshold: float
    prompt: str
    model_id: str
    seconds: float
    affine: np.ndarray
    cleanup: Union[None, str, int] = None
    seed: Optional[int] = None
    prompt_truncated: bool = False
    conversions: list = field(default_factory=list)

    @property
    def file_shape(self) -> tuple:
        return tuple(int(n) for n in self.probability.shape)

    def _geometry(self):
        """A voxel-less ScanVolume with this grid and affine: its exact display re-ordering."""
        from medclipseg.io.volumes import ScanVolume

        return ScanVolume(array=np.broadcast_to(np.float32(0), self.file_shape), affine=self.affine)

    @property
    def display_shape(self) -> tuple:
        return self._geometry().display_shape(self.slice_plane)

    def display(self, name: str) -> np.ndarray:
        """A map ("probability", "entropy", "mutual_information") or "mask" as [slice, row, column]
        in the display convention of ``slice_plane`` (a view)."""
        if name not in MAP_NAMES + ("mask",):
            raise ValueError(f"name must be one of {', '.join(MAP_NAMES + ('mask',))}; got {name!r}")
        return self._geometry().to_display(getattr(self, name), plane=self.slice_plane)

    def with_threshold(self, threshold: float) -> "VolumePrediction":
        """Re-threshold (and clean up again, and re-score) from the stored maps, without the model."""
        if not 0.0 < threshold < 1.0:
            raise ValueError("threshold must lie strictly between 0 and 1")
        geometry = self._geometry()
        display = {name: geometry.to_display(getattr(self, name), plane=self.slice_plane) for name in MAP_NAMES}
        mask = clean_mask(display["probability"] > np.float32(threshold), self.cleanup)
        per_slice, scores = _score_volume(display["probability"], display["entropy"], display["mutual_information"],
                                          mask, int(self.scores["boundary_band_px"]))
        return replace(self, mask=geometry.from_display(mask, plane=self.slice_plane), threshold=float(threshold),
                       scores=scores, slice_scores=per_slice, start_slice=scores["start_slice"])


# -- prediction -----------------------------------------------------------------------------------
@torch.inference_mode()
def predict_volume(
    predictor,
    volume,
    prompt: str,
    *,
    num_samples: int = 8,
    threshold: float = 0.5,
    seed: Optional[int] = None,
    window: Union[None, str, Sequence[float]] = None,
    batch_slices: Optional[int] = None,
    cleanup: Union[None, str, int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> VolumePrediction:
    """Segment ``volume`` (a ScanVolume) slice by slice with ``predictor`` (module docstring).

    ``batch_slices`` slices share a forward pass (results do not depend on it beyond float
    rounding); by default as many as keep a pass at ``predictor.rows_per_pass`` images (or
    ``predictor.chunk_size``, if smaller): batching more saves no time and costs memory.
    ``progress(slices done, total)`` is called after every pass.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError("threshold must lie strictly between 0 and 1")
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    chunk = max(1, min(predictor.chunk_size, num_samples))
    if batch_slices is None:
        batch_slices = batching.inputs_per_pass(getattr(predictor, "rows_per_pass", predictor.chunk_size), chunk)
    if int(batch_slices) < 1:
        raise ValueError("batch_slices must be >= 1")
    _check_cleanup(cleanup)
    started = time.perf_counter()
    plane = volume.slice_plane
    window = volume_window(volume, window)
    scan = volume.to_display(plane=plane)  # a view: no copy of the scan
    depth, rows, columns = scan.shape
    prompt, input_ids, truncated = predictor.tokenize(prompt)
    device = predictor.device
    input_ids = input_ids.to(device)
    maps = {name: np.empty((depth, rows, columns), dtype=MAP_DTYPE) for name in MAP_NAMES}
    stochastic = bool(getattr(getattr(predictor.model, "config", None), "stochastic", True))
    for first in range(0, depth, int(batch_slices)):
        indices = range(first, min(first + int(batch_slices), depth))
        pixels = predictor.to_device(torch.cat([_slice_pixels(scan[s], window, predictor.image_size)
                                                 for s in indices]))
        seeds = [None if seed is None else slice_seed(seed, s) for s in indices]
        with acceleration.autocast(device, predictor.precision):
            accumulators = batching.sample_accumulators(predictor.model, pixels, input_ids.repeat(len(indices), 1),
                                                        num_samples, chunk, seeds, stochastic=stochastic)
        for s, accumulator in zip(indices, accumulators):
            # As predict: maps at the model's resolution, then resized to the slice's.
            for name, values in (("probability", accumulator.mean_probability),
                                 ("entropy", accumulator.predictive_entropy),
                                 ("mutual_information", accumulator.mutual_information)):
                resized = resize_map(values.cpu().numpy().astype(np.float32), (rows, columns))
                # torch's float16 conversion rounds exactly as numpy's (both IEEE, to nearest even) but
                # stays fast on values that become float16 subnormals (p near 0), where numpy's takes
                # 15 ms for a 512 x 512 slice.
                maps[name][s] = torch.from_numpy(np.ascontiguousarray(resized)).to(torch.float16).numpy()
        if progress is not None:
            progress(indices[-1] + 1, depth)
    display_mask = clean_mask(maps["probability"] > np.float32(threshold), cleanup)
    band_width = max(1, int(round(BOUNDARY_BAND_224 * max(rows, columns) / predictor.image_size)))
    per_slice, scores = _score_volume(maps["probability"], maps["entropy"], maps["mutual_information"],
                                      display_mask, band_width)
    return VolumePrediction(
        probability=volume.from_display(maps["probability"], plane=plane),
        mask=volume.from_display(display_mask, plane=plane),
        entropy=volume.from_display(maps["entropy"], plane=plane),
        mutual_information=volume.from_display(maps["mutual_information"], plane=plane),
        scores=scores,
        slice_scores=per_slice,
        start_slice=scores["start_slice"],
        slice_plane=plane,
        window=tuple(float(v) for v in window),
        num_samples=num_samples,
        threshold=float(threshold),
        prompt=prompt,
        model_id=predictor.model_id,
        seconds=time.perf_counter() - started,
        affine=np.array(volume.affine, dtype=np.float64),
        cleanup=cleanup,
        seed=seed,
        prompt_truncated=truncated,
        conversions=list(getattr(volume, "conversions", []) or []),
    )


# -- compact storage ------------------------------------------------------------------------------
def compact_maps(prediction: VolumePrediction) -> dict:
    """The maps as uint8 ``[slice, row, column]`` in display order (one slice is one contiguous
    read): probability * 255, entropy and mutual information / ln 2 * 255, rounded. Expanded, a
    value is at most :data:`QUANTISATION_MAX_ERROR` (half a step: 1/510, ln 2/510) off."""
    compact = {}
    for name in MAP_NAMES:
        display = prediction.display(name)
        out = np.empty(display.shape, dtype=np.uint8)
        scale = _QUANTISATION_SCALE[name]
        for index in range(display.shape[0]):  # slice by slice: no float32 copy of the volume
            values = display[index].astype(np.float32) / np.float32(scale) * np.float32(255.0)
            out[index] = np.clip(np.rint(values), 0, 255)
        compact[name] = out
    return compact


def expand_maps(compact: dict, index: Optional[int] = None, names: Sequence[str] = MAP_NAMES) -> dict:
    """float32 maps back from :func:`compact_maps`: every display slice, or only slice ``index``."""
    expanded = {}
    for name in names:
        values = compact[name] if index is None else compact[name][int(index)]
        expanded[name] = values.astype(np.float32) * np.float32(_QUANTISATION_SCALE[name] / 255.0)
    return expanded
