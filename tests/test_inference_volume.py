"""Volume prediction (medclipseg.inference.volume) on the real T1, checked against independent formulas:
slices cut with nibabel's canonical orientation, windows from np.percentile and the standard CT
presets, per-slice predictions of Predictor.predict, binary entropy, scipy's connected components."""
from __future__ import annotations

import dataclasses
import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medclipseg.inference.volume import (
    QUANTISATION_MAX_ERROR,
    clean_mask,
    compact_maps,
    expand_maps,
    percentile_window,
    predict_volume,
    slice_seed,
    volume_window,
)
from medclipseg.io.volumes import ScanVolume, read_volume, window_to_uint8
from volume_support import real_t1

PROMPT = "Brain in the brain MRI image."
SAMPLES = 2
SEED = 11
# A 40 x 44 x 12 block of the real T1 crop (1 mm isotropic, so sliced axially).
BLOCK = (slice(12, 52), slice(14, 58), slice(14, 26))
# Standard CT display windows (center, width) in Hounsfield units.
CT_PRESETS_HU = {"Soft tissue": (40.0, 400.0), "Lung": (-600.0, 1500.0), "Bone": (400.0, 1800.0),
                 "Brain": (40.0, 80.0)}


def _sub_volume(volume: ScanVolume, block, modality: str = "MR", array=None) -> ScanVolume:
    """A block of ``volume`` with its affine moved by the block's offset (world positions kept)."""
    start = np.array([part.start for part in block], dtype=np.float64)
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ start + volume.affine[:3, 3]
    values = np.ascontiguousarray(volume.array[block]) if array is None else array
    return ScanVolume(array=values, affine=affine, modality=modality, name="t1 block", source_format="nifti")


def _canonical(values, affine) -> tuple:
    """``values`` on a grid with ``affine`` -> (array, affine) in RAS+ voxel order, by nibabel
    (float16 maps widened to float32 and masks to uint8, both exactly: NIfTI has neither type)."""
    values = np.asarray(values)
    if values.dtype == np.float16 or values.dtype == bool:
        values = values.astype(np.float32 if values.dtype == np.float16 else np.uint8)
    image = nib.as_closest_canonical(nib.Nifti1Image(values, affine))
    return np.asarray(image.dataobj), image.affine


def _axial_display(values, affine) -> np.ndarray:
    """Axial display slices [slice, row, column] of a 1 mm isotropic grid: slices run towards
    superior, rows towards posterior, columns towards the patient's left (the radiological view),
    computed from the RAS+ array: [x, y, z] -> [z, -y, -x]."""
    ras, _ = _canonical(values, affine)
    return np.transpose(ras, (2, 1, 0))[:, ::-1, ::-1]


def _binary_entropy(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def _expected_mr_window(values) -> tuple:
    """The 0.5th and 99.5th percentiles of the voxels above the minimum, as (center, width)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = np.percentile(values[values > values.min()], [0.5, 99.5])
    return (low + high) / 2, high - low


def _components(mask) -> tuple:
    """26-connected components: (labels, sizes with 0 for the background)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    return labels, np.bincount(labels.ravel(), minlength=count + 1) * (np.arange(count + 1) > 0)


@pytest.fixture(scope="module")
def block():
    return _sub_volume(real_t1(crop=True), BLOCK)


@pytest.fixture(scope="module")
def base(small_tiny_predictor, block):
    """The block predicted one slice per forward pass, seeded."""
    return predict_volume(small_tiny_predictor, block, PROMPT, num_samples=SAMPLES, seed=SEED, batch_slices=1)


def _middle_threshold(prediction) -> float:
    """A threshold that cuts the probability map in two non-empty parts (the tiny test model's
    probabilities are not calibrated, so 0.5 may select everything or nothing)."""
    values = np.unique(prediction.probability.astype(np.float32))
    assert values.size > 2, "the test model predicts a constant map"
    threshold = float(values[int(values.size * 0.6)])
    assert 0.0 < threshold < 1.0
    return threshold


# -------------------------------------------------------------------------- slices and samples


def test_each_slice_equals_predict_on_the_windowed_slice(small_tiny_predictor, block, base):
    window = _expected_mr_window(block.array)
    assert base.window == pytest.approx(window, rel=1e-9)
    assert base.slice_plane == "axial"
    scan = _axial_display(block.array, block.affine)
    maps = {name: _axial_display(getattr(base, name), base.affine)
            for name in ("probability", "entropy", "mutual_information")}
    assert scan.shape == maps["probability"].shape == (12, 44, 40)
    for s in range(scan.shape[0]):
        grey = window_to_uint8(scan[s], window)
        single = small_tiny_predictor.predict(grey, PROMPT, num_samples=SAMPLES, seed=slice_seed(SEED, s))
        for name, values in maps.items():
            expected = getattr(single, name).astype(np.float16)
            np.testing.assert_array_equal(values[s], expected, err_msg=f"{name} of slice {s}")


def test_slices_sharing_a_forward_pass_agree_within_1e_4(small_tiny_predictor, block, base):
    done = []
    batched = predict_volume(small_tiny_predictor, block, PROMPT, num_samples=SAMPLES, seed=SEED, batch_slices=4,
                             progress=lambda count, total: done.append((count, total)))
    assert done == [(4, 12), (8, 12), (12, 12)]
    for name in ("probability", "entropy", "mutual_information"):
        difference = np.abs(getattr(batched, name).astype(np.float32) - getattr(base, name).astype(np.float32))
        # 1e-4 of model arithmetic plus one float16 rounding step of the stored maps
        step = np.spacing(np.abs(getattr(base, name)).astype(np.float16)).astype(np.float32)
        assert np.all(difference <= 1e-4 + step), f"{name}: {difference.max():.2e}"


def test_the_seed_fixes_the_samples_and_no_seed_varies_them(small_tiny_predictor, block, base):
    # The block's two lowest slices alone (the file is RAS+: k runs towards superior), windowed as
    # the whole block was: the same seed draws the same samples for display slices 0 and 1.
    assert nib.aff2axcodes(block.affine) == ("R", "A", "S")
    small = _sub_volume(block, (slice(0, 40), slice(0, 44), slice(0, 2)))
    again = predict_volume(small_tiny_predictor, small, PROMPT, num_samples=SAMPLES, seed=SEED, batch_slices=1,
                           window=base.window)
    np.testing.assert_array_equal(again.probability, base.probability[:, :, :2])
    other = predict_volume(small_tiny_predictor, small, PROMPT, num_samples=SAMPLES, seed=SEED + 1, batch_slices=1,
                           window=base.window)
    assert not np.array_equal(other.probability, again.probability)
    assert slice_seed(SEED, 0) != slice_seed(SEED, 1) != slice_seed(SEED + 1, 1)
    assert slice_seed(SEED, 5) == slice_seed(SEED, 5) and 0 <= slice_seed(SEED, 5) < 2 ** 63


# -------------------------------------------------------------------------- geometry


def _reordered(volume: ScanVolume) -> tuple:
    """The volume's voxels stored in another order: axes permuted and two of them flipped, with
    the affine changed by nibabel's orientation tools so every voxel keeps its world position."""
    ornt = np.array([[2, -1], [0, 1], [1, -1]])  # file axis i -> new axis 2 flipped, j -> 0, k -> 1 flipped
    array = nib.orientations.apply_orientation(volume.array, ornt)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(ornt, volume.shape)
    return np.ascontiguousarray(array), affine


def test_another_voxel_order_gives_the_same_mask_in_world_space(small_tiny_predictor, block, tmp_path):
    from medclipseg.io.volume_writers import write_nifti

    array, affine = _reordered(block)
    assert array.shape == (44, 12, 40)
    # sanity of the re-ordering: the same world point holds the same value in both files
    voxel = np.array([5, 7, 3])
    world = block.affine @ np.append(voxel, 1.0)
    moved = np.rint(np.linalg.solve(affine, world)[:3]).astype(int)
    assert array[tuple(moved)] == block.array[tuple(voxel)]

    paths = {}
    for name, values, grid in (("original", block.array, block.affine), ("reordered", array, affine)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(values, grid), paths[name])
    original, reordered = (read_volume(paths[name]) for name in ("original", "reordered"))
    assert reordered.shape == (44, 12, 40) and reordered.slice_plane == original.slice_plane == "axial"
    first = predict_volume(small_tiny_predictor, original, PROMPT, num_samples=SAMPLES, seed=SEED, batch_slices=4)
    second = predict_volume(small_tiny_predictor, reordered, PROMPT, num_samples=SAMPLES, seed=SEED, batch_slices=4)

    # the maps and the mask lie on each file's own grid, with its shape and affine
    for prediction, volume in ((first, original), (second, reordered)):
        for name in ("probability", "entropy", "mutual_information", "mask"):
            assert getattr(prediction, name).shape == volume.shape
        assert prediction.probability.dtype == np.float16 and prediction.mask.dtype == bool
        np.testing.assert_array_equal(prediction.affine, volume.affine)

    threshold = _middle_threshold(first)
    first, second = first.with_threshold(threshold), second.with_threshold(threshold)
    assert 0 < first.mask.sum() < first.mask.size
    # In RAS+ (nibabel's canonical order) the two results are one array on one grid.
    for name in ("probability", "entropy", "mutual_information", "mask"):
        ras_first, affine_first = _canonical(getattr(first, name), first.affine)
        ras_second, affine_second = _canonical(getattr(second, name), second.affine)
        np.testing.assert_allclose(affine_first, affine_second, atol=1e-9)
        np.testing.assert_array_equal(ras_first, ras_second, err_msg=name)
    # ... and the mask voxels have the same world coordinates, each through its own file's affine
    worlds = []
    for prediction in (first, second):
        voxels = np.argwhere(prediction.mask)
        points = nib.affines.apply_affine(prediction.affine, voxels)
        worlds.append(points[np.lexsort(np.rint(points * 1000).T)])
    np.testing.assert_allclose(worlds[0], worlds[1], atol=1e-6)

    # written next to their scans, the masks read back onto the scans' grids
    for prediction, volume, name in ((first, original, "original"), (second, reordered, "reordered")):
        path = write_nifti(volume, prediction.mask, tmp_path / f"{name}_mask.nii.gz", dtype=np.uint8)
        written = nib.load(path)
        assert written.shape == volume.shape
        np.testing.assert_allclose(written.affine, volume.affine, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(written.dataobj), prediction.mask.astype(np.uint8))
    written = [_canonical(np.asarray(nib.load(tmp_path / f"{n}_mask.nii.gz").dataobj), nib.load(
        tmp_path / f"{n}_mask.nii.gz").affine)[0] for n in ("original", "reordered")]
    np.testing.assert_array_equal(written[0], written[1])


# -------------------------------------------------------------------------- the maps


def test_entropy_is_the_binary_entropy_of_the_mean_probability(small_tiny_predictor):
    # Slices of 224 x 224 voxels, the model's own resolution: no resizing between the maps, so the
    # entropy map is H(p) of the probability map up to float16 storage.
    t1 = real_t1(crop=False)
    array = np.zeros((224, 224, 2), dtype=np.float32)
    array[21:202, 3:220] = t1.array[:, :, 80:82]
    volume = ScanVolume(array=array, affine=t1.affine, modality="MR")
    prediction = predict_volume(small_tiny_predictor, volume, PROMPT, num_samples=3, seed=SEED)
    p = prediction.probability.astype(np.float64)
    entropy = prediction.entropy.astype(np.float64)
    information = prediction.mutual_information.astype(np.float64)
    # float16 keeps 11 significant bits: p is off by at most half a step, which moves H(p) by at
    # most |H'(p)| = |log((1 - p) / p)| times that; the stored entropy is off by half a step too.
    p_step = np.spacing(prediction.probability).astype(np.float64) / 2
    slope = np.abs(np.log(np.clip(1 - p, 1e-12, 1)) - np.log(np.clip(p, 1e-12, 1)))
    tolerance = slope * p_step + np.spacing(prediction.entropy).astype(np.float64) / 2 + 1e-6
    assert np.all(np.abs(entropy - _binary_entropy(p)) <= tolerance)
    assert np.all(information >= 0) and np.all(information <= entropy) and entropy.max() <= np.float16(math.log(2))
    assert information.max() > 0  # the samples differ

    single = predict_volume(small_tiny_predictor, volume, PROMPT, num_samples=1, seed=SEED)
    assert np.all(single.mutual_information == 0)  # one sample: H(mean) - mean(H) = 0


def test_entropy_bounds_on_a_resized_slice(base):
    # Slices of 44 x 40: the maps are resized from the model's 224 x 224 by the same linear
    # interpolation, so (H concave) the entropy is at most H of the probability, and MI at most it.
    p = base.probability.astype(np.float64)
    entropy = base.entropy.astype(np.float64)
    information = base.mutual_information.astype(np.float64)
    slope = np.abs(np.log(np.clip(1 - p, 1e-12, 1)) - np.log(np.clip(p, 1e-12, 1)))
    tolerance = slope * np.spacing(base.probability).astype(np.float64) / 2 + np.spacing(base.entropy) / 2 + 1e-6
    assert np.all(entropy <= _binary_entropy(p) + tolerance)
    assert np.all(information >= 0) and np.all(information <= entropy)


def test_mask_is_probability_above_threshold(base):
    np.testing.assert_array_equal(base.mask, base.probability.astype(np.float32) > np.float32(0.5))
    assert base.threshold == 0.5


def test_with_threshold_equals_a_fresh_prediction(small_tiny_predictor, block, base):
    threshold = _middle_threshold(base)
    fresh = predict_volume(small_tiny_predictor, block, PROMPT, num_samples=SAMPLES, seed=SEED, batch_slices=1,
                           threshold=threshold)
    np.testing.assert_array_equal(fresh.probability, base.probability)
    np.testing.assert_array_equal(fresh.mask, fresh.probability.astype(np.float32) > np.float32(threshold))
    again = base.with_threshold(threshold)
    np.testing.assert_array_equal(again.mask, fresh.mask)
    assert 0 < again.mask.sum() < again.mask.size and again.threshold == threshold
    assert again.start_slice == fresh.start_slice
    for key, value in fresh.scores.items():
        assert again.scores[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


# -------------------------------------------------------------------------- clean-up


def _blocks_mask() -> np.ndarray:
    """Components of 27, 8, 4 (two voxels touching only at a corner, 26-connected) and 1 voxels."""
    mask = np.zeros((12, 12, 10), dtype=bool)
    mask[1:4, 1:4, 1:4] = True         # 27
    mask[7:9, 7:9, 1:3] = True         # 8
    mask[1:3, 8, 6] = True             # 2 ...
    mask[3, 9, 7] = mask[4, 10, 8] = True  # ... + 2 along a diagonal: one component of 4
    mask[10, 1, 8] = True              # 1
    return mask


def test_clean_mask_largest_and_minimum_size_against_scipy():
    mask = _blocks_mask()
    labels, sizes = _components(mask)
    assert sorted(sizes[1:]) == [1, 4, 8, 27]
    np.testing.assert_array_equal(clean_mask(mask, "largest"), labels == np.argmax(sizes))
    for minimum in (1, 2, 4, 5, 8, 9, 27, 28):
        expected = np.isin(labels, np.flatnonzero(sizes >= minimum)) & mask
        np.testing.assert_array_equal(clean_mask(mask, minimum), expected, err_msg=f"N = {minimum}")
    assert clean_mask(mask, None) is mask
    empty = np.zeros_like(mask)
    assert not clean_mask(empty, "largest").any() and not clean_mask(empty, 3).any()
    for bad in (0, -2, True, "biggest", 2.5):
        with pytest.raises(ValueError, match="cleanup must be"):
            clean_mask(mask, bad)


def test_predicted_masks_are_cleaned_in_3d(small_tiny_predictor, block, base):
    threshold = _middle_threshold(base)
    raw = base.probability.astype(np.float32) > np.float32(threshold)
    labels, sizes = _components(raw)
    assert np.count_nonzero(sizes == sizes.max()) == 1  # one largest component, no tie
    largest = predict_volume(small_tiny_predictor, block, PROMPT, num_samples=SAMPLES, seed=SEED, batch_slices=1,
                             threshold=threshold, cleanup="largest")
    np.testing.assert_array_equal(largest.mask, labels == np.argmax(sizes))
    np.testing.assert_array_equal(largest.probability, base.probability)
    # the clean-up survives a change of threshold; a minimum size via with_threshold
    minimum = int(np.median(sizes[sizes > 0])) + 1
    sized = dataclasses.replace(base, cleanup=minimum).with_threshold(threshold)
    np.testing.assert_array_equal(sized.mask, np.isin(labels, np.flatnonzero(sizes >= minimum)) & raw)
    assert largest.with_threshold(threshold).mask.sum() == sizes.max()


# -------------------------------------------------------------------------- 8-bit storage


def test_compact_maps_round_trip_within_the_stated_error(base):
    assert QUANTISATION_MAX_ERROR["probability"] == pytest.approx(0.5 / 255)
    assert QUANTISATION_MAX_ERROR["entropy"] == pytest.approx(math.log(2) * 0.5 / 255)
    assert QUANTISATION_MAX_ERROR["mutual_information"] == pytest.approx(math.log(2) * 0.5 / 255)
    compact = compact_maps(base)
    expanded = expand_maps(compact)
    for name in ("probability", "entropy", "mutual_information"):
        display = _axial_display(getattr(base, name), base.affine).astype(np.float32)
        assert compact[name].dtype == np.uint8 and compact[name].shape == display.shape
        error = np.abs(expanded[name] - display)
        assert error.max() <= QUANTISATION_MAX_ERROR[name] + 1e-6, f"{name}: {error.max():.2e}"
        one = expand_maps(compact, index=5, names=(name,))
        assert set(one) == {name}
        np.testing.assert_array_equal(one[name], expanded[name][5])


# -------------------------------------------------------------------------- windows


def _ct_block(block, depth: int = 12) -> ScanVolume:
    """The T1 block's values rescaled to -1000..1400 "HU", as a CT volume."""
    values = block.array[:, :, :depth].astype(np.float64)
    hu = (values - values.min()) / (values.max() - values.min()) * 2400.0 - 1000.0
    return ScanVolume(array=hu.astype(np.float32), affine=block.affine, modality="CT")


def test_ct_windows_are_the_standard_presets_in_hu(block):
    ct = _ct_block(block)
    assert volume_window(ct) == CT_PRESETS_HU["Soft tissue"]
    for name, expected in CT_PRESETS_HU.items():
        assert volume_window(ct, name) == expected
        assert volume_window(ct, name.upper()) == expected
        assert volume_window(ct, f" {name.lower()} ") == expected
    assert volume_window(ct, (35, 350)) == (35.0, 350.0)


def test_ct_slices_are_windowed_with_the_preset(small_tiny_predictor, block):
    ct = _ct_block(block, depth=2)
    prediction = predict_volume(small_tiny_predictor, ct, PROMPT, num_samples=SAMPLES, seed=SEED, window="Lung",
                                batch_slices=1)
    assert prediction.window == CT_PRESETS_HU["Lung"]
    scan = _axial_display(ct.array, ct.affine)
    probability = _axial_display(prediction.probability, prediction.affine)
    for s in range(2):
        grey = window_to_uint8(scan[s], CT_PRESETS_HU["Lung"])
        single = small_tiny_predictor.predict(grey, PROMPT, num_samples=SAMPLES, seed=slice_seed(SEED, s))
        np.testing.assert_array_equal(probability[s], single.probability.astype(np.float16))


def test_mr_window_is_the_percentile_window_of_the_voxels_above_the_minimum(block):
    assert volume_window(block) == pytest.approx(_expected_mr_window(block.array), rel=1e-9)
    # a zero background around the brain does not enter
    padded = np.pad(block.array, ((6, 6), (6, 6), (2, 2)))
    volume = ScanVolume(array=padded, affine=block.affine, modality="MR")
    center, width = volume_window(volume)
    assert (center, width) == pytest.approx(_expected_mr_window(padded), rel=1e-9)
    assert center - width / 2 > 0
    # other percentiles
    values = block.array.astype(np.float64)
    low, high = np.percentile(values[values > values.min()], [2, 98])
    assert percentile_window(block.array, (2, 98)) == pytest.approx(((low + high) / 2, high - low), rel=1e-9)
    # an explicit (center, width) is kept, in the volume's own units
    assert volume_window(block, (300, 500)) == (300.0, 500.0)
    # unknown modality: the percentile window as well
    unknown = ScanVolume(array=block.array, affine=block.affine)
    assert volume_window(unknown) == pytest.approx(_expected_mr_window(block.array), rel=1e-9)


def test_large_volume_percentile_window_reads_an_even_stride(block, monkeypatch):
    """Over PERCENTILE_SAMPLE_VOXELS voxels the window comes from every n-th voxel (no scan-sized copy)."""
    import medclipseg.inference.volume as volume_module

    monkeypatch.setattr(volume_module, "PERCENTILE_SAMPLE_VOXELS", 1000)
    flat = block.array.reshape(-1).astype(np.float64)
    stride = int(np.ceil(flat.size / 1000))
    sample = flat[::stride]
    low, high = np.percentile(sample[sample > flat.min()], [0.5, 99.5])
    assert percentile_window(block.array) == pytest.approx(((low + high) / 2, high - low), rel=1e-9)


# -------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("options, words", [
    ({"threshold": 0.0}, "threshold must lie strictly between 0 and 1"),
    ({"threshold": 1.0}, "threshold must lie strictly between 0 and 1"),
    ({"num_samples": 0}, "num_samples must be >= 1"),
    ({"batch_slices": 0}, "batch_slices must be >= 1"),
    ({"window": "Soft tissue"}, "Window presets are in Hounsfield units and apply to CT"),
    ({"window": (40, 0)}, "width positive"),
    ({"window": (40, -10)}, "width positive"),
    ({"window": (40,)}, "A window is a preset name or"),
    ({"cleanup": 0}, "cleanup must be"),
])
def test_bad_arguments_are_refused_in_words(small_tiny_predictor, block, options, words):
    with pytest.raises(ValueError, match=words):
        predict_volume(small_tiny_predictor, block, PROMPT, **{"num_samples": 1, **options})


def test_unknown_ct_preset_lists_the_known_ones(small_tiny_predictor, block, base):
    with pytest.raises(ValueError, match=r"Unknown CT window 'Abdomen'; use one of Soft tissue, Lung, Bone"):
        predict_volume(small_tiny_predictor, _ct_block(block, 2), PROMPT, num_samples=1, window="Abdomen")
    for threshold in (0.0, 1.0):
        with pytest.raises(ValueError, match="threshold must lie strictly between 0 and 1"):
            base.with_threshold(threshold)


@pytest.mark.parametrize("k", [1, 37, 500, 2400])
def test_volume_top_entropy_is_the_mean_of_the_k_largest_voxels(k):
    from medclipseg.inference.volume import _top_mean_float16

    rng = np.random.default_rng(k)
    entropy = (rng.random((6, 20, 20)) * math.log(2)).astype(np.float16)
    entropy[1] = np.float16(0.25)  # a plateau of ties
    expected = np.sort(entropy.astype(np.float64).ravel())[::-1][:k].mean()
    assert _top_mean_float16(entropy, k) == pytest.approx(expected, rel=1e-12)


def test_start_slice_without_any_band_falls_back_to_entropy_then_the_middle():
    from medclipseg.inference.volume import _start_slice

    band = np.array([0.0, 0.2, 0.5, 0.1])
    mean = np.array([0.3, 0.0, 0.0, 0.0])
    assert _start_slice(band, mean, 4) == 2
    assert _start_slice(np.zeros(4), mean, 4) == 0
    assert _start_slice(np.zeros(5), np.zeros(5), 5) == 2
