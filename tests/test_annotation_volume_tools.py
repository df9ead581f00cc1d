"""Volume correction tools: interpolation, propagation and 3-D clean-up, checked against formulas
computed here with scipy and brute force, plus the stopping rules of propagation."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medclipseg.annotation import volume_tools as vt
from volume_support import real_t1

ANISOTROPIC = (3.0, 0.8, 0.8)


def _disk(shape, center, radius, spacing=(1.0, 1.0)):
    rows, columns = np.indices(shape)
    return ((rows - center[0]) * spacing[0]) ** 2 + ((columns - center[1]) * spacing[1]) ** 2 <= radius ** 2


def _sdf(mask2d, spacing2d):
    """Signed distance written out independently: distance to the other side, negative inside."""
    outside = ndimage.distance_transform_edt(~mask2d, sampling=spacing2d)
    inside = ndimage.distance_transform_edt(mask2d, sampling=spacing2d)
    return np.where(mask2d, -inside, outside)


def _dice(a, b):
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


# ------------------------------------------------------------------------------------------
# Interpolation


def test_interpolation_matches_signed_distance_formula():
    spacing = (2.0, 0.8, 1.2)
    mask = np.zeros((12, 30, 26), dtype=bool)
    mask[2] = _disk((30, 26), (12, 10), 6.0, spacing[1:])
    mask[8] = _disk((30, 26), (17, 14), 9.0, spacing[1:]) & ~_disk((30, 26), (17, 14), 2.0, spacing[1:])
    rng = np.random.default_rng(0)
    mask[:2] = rng.random((2, 30, 26)) > 0.5        # outside the drawn range: must stay as is
    mask[9:] = rng.random((3, 30, 26)) > 0.5
    mask[4] = True                                   # in between: overwritten
    result, filled = vt.interpolate_slices(mask, [8, 2], spacing)
    assert filled == [3, 4, 5, 6, 7]
    sdf_a, sdf_b = _sdf(mask[2], spacing[1:]), _sdf(mask[8], spacing[1:])
    for s in filled:
        t = (s - 2) / 6
        np.testing.assert_array_equal(result[s], (1 - t) * sdf_a + t * sdf_b < 0)
        assert result[s].any()
    np.testing.assert_array_equal(result[[0, 1, 2, 8, 9, 10, 11]], mask[[0, 1, 2, 8, 9, 10, 11]])
    assert mask[4].all(), "the input must not change"


def test_interpolation_over_several_drawn_slices_and_adjacent_pairs():
    mask = np.zeros((10, 20, 20), dtype=bool)
    for s, radius in ((0, 3.0), (4, 7.0), (5, 6.0), (9, 2.0)):
        mask[s] = _disk((20, 20), (10, 10), radius)
    result, filled = vt.interpolate_slices(mask, [9, 0, 4, 5, 4])
    assert filled == [1, 2, 3, 6, 7, 8]
    areas = result.sum(axis=(1, 2))
    assert list(areas[:5]) == sorted(areas[:5]) and list(areas[5:]) == sorted(areas[5:], reverse=True)


def test_interpolation_with_empty_drawn_slices():
    mask = np.zeros((11, 24, 24), dtype=bool)
    both_empty = mask.copy()
    both_empty[3:7] = True
    result, filled = vt.interpolate_slices(both_empty, [1, 9])
    assert filled == list(range(2, 9)) and not result[2:9].any()

    mask[0] = _disk((24, 24), (12, 11), 8.0)
    result, filled = vt.interpolate_slices(mask, [0, 10])
    sdf_a = _sdf(mask[0], (1.0, 1.0))
    depth = -sdf_a.min()
    for s in filled:
        t = s / 10
        np.testing.assert_array_equal(result[s], (1 - t) * sdf_a + t * depth < 0)
    areas = result.sum(axis=(1, 2))
    assert areas[1] > 0 and all(areas[s] >= areas[s + 1] for s in range(10))
    assert not result[5:].any(), "the structure ends by the middle slice"
    # The same from the other side.
    flipped, _ = vt.interpolate_slices(mask[::-1], [0, 10])
    np.testing.assert_array_equal(flipped[::-1], result)


def test_interpolation_refuses_bad_input():
    mask = np.zeros((5, 8, 8), dtype=bool)
    with pytest.raises(ValueError, match="at least two drawn slices"):
        vt.interpolate_slices(mask, [2])
    with pytest.raises(ValueError, match="at least two drawn slices"):
        vt.interpolate_slices(mask, [2, 2])
    with pytest.raises(ValueError, match="outside the volume"):
        vt.interpolate_slices(mask, [0, 5])
    with pytest.raises(ValueError, match="3-D"):
        vt.interpolate_slices(mask[0], [0, 3])
    with pytest.raises(ValueError, match="spacing"):
        vt.interpolate_slices(mask, [0, 3], spacing=(1.0, 0.0, 1.0))


def test_interpolation_on_real_t1_brain_block():
    volume = real_t1(crop=True)
    image = volume.to_display().astype(np.float64)
    spacing = volume.display_spacing()
    # A "tissue" mask: smoothed intensity above its median, the largest 3-D piece kept.
    truth = ndimage.gaussian_filter(image, 1.5) > np.median(image)
    truth = vt.remove_islands(truth)
    first, last = 15, 25
    drawn = np.zeros_like(truth)
    drawn[[first, last]] = truth[[first, last]]
    result, filled = vt.interpolate_slices(drawn, [first, last], spacing)
    assert filled == list(range(first + 1, last))
    dice = _dice(result[first + 1:last], truth[first + 1:last])
    print(f"real T1: 3-D Dice of slices {first + 1}..{last - 1} interpolated from {first} and {last}: {dice:.3f}")
    assert dice > 0.8


# ------------------------------------------------------------------------------------------
# Propagation


def _sphere_case():
    """A ball of radius 14 mm at slice 10 (2 mm slices), with a smooth probability and a low entropy."""
    shape, spacing = (20, 40, 40), (2.0, 1.0, 1.0)
    s, r, c = np.indices(shape)
    distance = np.sqrt(((s - 10) * 2.0) ** 2 + (r - 20.0) ** 2 + (c - 20.0) ** 2) - 14.0
    probability = 1.0 / (1.0 + np.exp(distance / 1.5))
    entropy = np.full(shape, 0.05)
    mask = np.zeros(shape, dtype=bool)
    mask[10] = probability[10] > 0.5
    return mask, probability, entropy, spacing


def test_propagation_stops_where_the_band_is_uncertain():
    mask, probability, entropy, spacing = _sphere_case()
    band13 = vt.boundary_band_2d(probability[13] > 0.5, 2)
    entropy[13][band13] = 0.6
    result = vt.propagate(mask, probability, entropy, 10, direction=+1, spacing=spacing, dilation_mm=3.0,
                          max_band_entropy=0.35, max_area_change=None, band_width=2)
    assert result.filled == [11, 12]
    stop = result.stop(+1)
    assert stop.slice == 13 and stop.code == "uncertain"
    assert stop.reason == "uncertain: band entropy 0.60 > 0.35 nats"
    assert stop.band_entropy == pytest.approx(0.6)
    assert result.stop(-1) is None
    assert not result.mask[13].any() and not result.mask[:10].any()
    for s in (11, 12):
        np.testing.assert_array_equal(result.mask[s], probability[s] > 0.5)

    free = vt.propagate(mask, probability, entropy, 10, direction=+1, spacing=spacing,
                        max_band_entropy=None, max_area_change=None)
    assert free.filled == [11, 12, 13, 14, 15, 16]
    assert free.stop(+1).slice == 17 and free.stop(+1).reason == "empty"
    np.testing.assert_array_equal(free.mask[11:17], probability[11:17] > 0.5)
    assert not free.mask[17:].any()


def test_propagation_both_ways_through_a_sphere():
    mask, probability, entropy, spacing = _sphere_case()
    result = vt.propagate(mask, probability, entropy, 10, spacing=spacing, max_area_change=None)
    assert result.filled == [4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16]
    assert [(stop.direction, stop.slice, stop.reason) for stop in result.stops] == [(1, 17, "empty"), (-1, 3, "empty")]
    expected = probability > 0.5
    np.testing.assert_array_equal(result.mask, expected)
    assert result.stop(+1).band_entropy is None          # an empty candidate has no band


def test_propagation_stops_on_area_change_and_keeps_only_touching_components():
    shape = (10, 32, 32)
    probability = np.zeros(shape)
    probability[:] = _disk((32, 32), (16, 16), 5.0) * 0.9
    probability[6, 16, 25] = 0.9                     # an island within the dilation but not touching
    probability[7] = _disk((32, 32), (16, 16), 9.0) * 0.9
    entropy = np.zeros(shape)
    mask = np.zeros(shape, dtype=bool)
    mask[5] = probability[5] > 0.5
    result = vt.propagate(mask, probability, entropy, 5, direction=1, dilation_mm=10.0)
    assert result.filled == [6]
    np.testing.assert_array_equal(result.mask[6], mask[5])
    stop = result.stop(1)
    change = (probability[7] > 0.5).sum() / mask[5].sum() - 1.0
    assert stop.slice == 7 and stop.code == "area"
    assert stop.area_change == pytest.approx(change)
    assert stop.reason == f"area changed by {100 * change:.0f} % > 50 %"
    assert change > 0.5

    through = vt.propagate(mask, probability, entropy, 5, direction=1, dilation_mm=10.0, max_area_change=None)
    assert through.filled == [6, 7, 8, 9] and through.stop(1).reason == "end of volume"
    assert through.stop(1).slice is None
    np.testing.assert_array_equal(through.mask[8], mask[5])
    # A small dilation limits the growth: slice 7 reaches at most 2 mm beyond slice 6 (spacing 1 x 2 mm).
    limited = vt.propagate(mask, probability, entropy, 5, direction=1, spacing=(1.0, 1.0, 2.0),
                           dilation_mm=2.0, max_area_change=None)
    reach = ndimage.distance_transform_edt(~mask[5], sampling=(1.0, 2.0)) <= 2.0
    np.testing.assert_array_equal(limited.mask[7], (probability[7] > 0.5) & reach)
    assert limited.mask[7].sum() > mask[5].sum()


def test_propagation_never_overwrites_locked_slices():
    shape = (12, 20, 20)
    probability = np.repeat(_disk((20, 20), (10, 10), 5.0)[None] * 0.8, shape[0], axis=0)
    mask = np.zeros(shape, dtype=bool)
    mask[5] = probability[5] > 0.5
    mask[8, :3, :3] = True                           # saved by someone else
    result = vt.propagate(mask, probability, None, 5, max_band_entropy=None, locked=[8, 5])
    assert result.filled == [0, 1, 2, 3, 4, 6, 7]
    assert result.stop(1).slice == 8 and result.stop(1).reason == "drawn slice"
    assert result.stop(-1).slice is None and result.stop(-1).reason == "end of volume"
    np.testing.assert_array_equal(result.mask[8], mask[8])
    assert not result.mask[9:].any()

    limited = vt.propagate(mask, probability, None, 5, direction=-1, max_band_entropy=None, max_slices=2)
    assert limited.filled == [3, 4] and limited.stop(-1).slice == 2


def test_propagation_refuses_bad_input():
    shape = (6, 10, 10)
    mask = np.zeros(shape, dtype=bool)
    probability = np.zeros(shape)
    entropy = np.zeros(shape)
    with pytest.raises(ValueError, match="start slice 2 is empty"):
        vt.propagate(mask, probability, entropy, 2)
    mask[2, 4:6, 4:6] = True
    with pytest.raises(ValueError, match="outside the volume"):
        vt.propagate(mask, probability, entropy, 6)
    with pytest.raises(ValueError, match="probability has shape"):
        vt.propagate(mask, probability[:3], entropy, 2)
    with pytest.raises(ValueError, match="entropy map is needed"):
        vt.propagate(mask, probability, None, 2)
    with pytest.raises(ValueError, match="direction"):
        vt.propagate(mask, probability, entropy, 2, direction=2)
    with pytest.raises(ValueError, match="dilation_mm"):
        vt.propagate(mask, probability, entropy, 2, dilation_mm=-1)


# ------------------------------------------------------------------------------------------
# 3-D tools


def _brute_force_distance(mask, spacing):
    """Distance (mm) from every voxel centre to the nearest voxel centre of `mask`."""
    points = np.argwhere(mask) * np.array(spacing)
    grid = np.indices(mask.shape).reshape(3, -1).T * np.array(spacing)
    distances = np.sqrt(((grid[:, None, :] - points[None, :, :]) ** 2).sum(-1)).min(1)
    return distances.reshape(mask.shape)


@pytest.mark.parametrize("mm", [1.0, 1.7, 2.5, 3.1, 4.5])
def test_grow_and_shrink_match_brute_force_distances(mm):
    rng = np.random.default_rng(int(mm * 10))
    mask = ndimage.binary_dilation(rng.random((5, 9, 8)) > 0.85)
    grown = vt.grow_mm(mask, mm, ANISOTROPIC)
    np.testing.assert_array_equal(grown, _brute_force_distance(mask, ANISOTROPIC) <= mm)
    shrunk = vt.shrink_mm(mask, mm, ANISOTROPIC)
    np.testing.assert_array_equal(shrunk, mask & (_brute_force_distance(~mask, ANISOTROPIC) > mm))
    np.testing.assert_array_equal(shrunk, ~vt.grow_mm(~mask, mm, ANISOTROPIC))


def test_grow_and_shrink_edge_cases():
    mask = np.zeros((4, 5, 6), dtype=bool)
    assert not vt.grow_mm(mask, 3.0, ANISOTROPIC).any()
    mask[2, 2, 3] = True
    np.testing.assert_array_equal(vt.grow_mm(mask, 0, ANISOTROPIC), mask)
    assert vt.grow_mm(mask, 0.9, ANISOTROPIC).sum() == 5    # in-plane neighbours only (0.8 mm)
    assert vt.grow_mm(mask, 3.0, ANISOTROPIC)[[1, 3], 2, 3].all()
    assert vt.shrink_mm(np.ones((3, 3, 3), dtype=bool), 5.0).all()
    with pytest.raises(ValueError, match="0 mm or more"):
        vt.grow_mm(mask, -1.0)
    with pytest.raises(ValueError, match="spacing"):
        vt.shrink_mm(mask, 1.0, (1.0, 1.0))


def test_fill_holes_matches_scipy():
    rng = np.random.default_rng(3)
    for density in (0.5, 0.65, 0.8):
        mask = rng.random((12, 13, 14)) < density
        np.testing.assert_array_equal(vt.fill_holes_3d(mask), ndimage.binary_fill_holes(mask))
    s, r, c = np.indices((15, 15, 15)) - 7
    radius = np.sqrt(s ** 2 + r ** 2 + c ** 2)
    shell = (radius <= 6) & (radius > 4)
    filled = vt.fill_holes_3d(shell)
    np.testing.assert_array_equal(filled, radius <= 6)
    opened = shell.copy()
    opened[7, 7, 7:] = False                          # a tunnel to the border: no longer a hole
    np.testing.assert_array_equal(vt.fill_holes_3d(opened), opened)


def test_islands_and_components_match_scipy_labels():
    rng = np.random.default_rng(4)
    mask = rng.random((10, 12, 11)) < 0.25
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    assert count > 3
    np.testing.assert_array_equal(vt.remove_islands(mask), labels == largest)
    np.testing.assert_array_equal(vt.remove_islands(mask, min_voxels=4),
                                  np.isin(labels, np.flatnonzero(sizes >= 4) + 1))
    voxel = tuple(np.argwhere(labels == 2)[0])
    np.testing.assert_array_equal(vt.component_at(mask, voxel), labels == 2)
    np.testing.assert_array_equal(vt.delete_component(mask, voxel), mask & (labels != 2))
    np.testing.assert_array_equal(vt.keep_component(mask, voxel), labels == 2)
    background = tuple(np.argwhere(~mask)[0])
    assert not vt.component_at(mask, background).any()
    np.testing.assert_array_equal(vt.delete_component(mask, background), mask)
    with pytest.raises(ValueError, match="not in the mask"):
        vt.keep_component(mask, background)
    with pytest.raises(ValueError, match="outside the volume"):
        vt.component_at(mask, (10, 0, 0))
    assert not vt.remove_islands(np.zeros((2, 2, 2), dtype=bool)).any()


def test_connectivity_choice():
    corner = np.zeros((3, 3, 3), dtype=bool)
    corner[0, 0, 0] = corner[1, 1, 1] = True
    assert vt.component_at(corner, (0, 0, 0)).sum() == 2
    assert vt.component_at(corner, (0, 0, 0), connectivity=6).sum() == 1
    assert vt.remove_islands(corner, connectivity=6).sum() == 1
    with pytest.raises(ValueError, match="connectivity"):
        vt.remove_islands(corner, connectivity=8)


def test_sphere_threshold_matches_brute_force():
    rng = np.random.default_rng(5)
    shape = (8, 20, 18)
    mask = rng.random(shape) < 0.5
    probability = rng.random(shape)
    center, radius = (3.4, 9.0, 16.5), 4.0
    result = vt.sphere_threshold(mask, probability, center, radius, ANISOTROPIC, threshold=0.3)
    s, r, c = np.indices(shape)
    inside = ((s - center[0]) * 3.0) ** 2 + ((r - center[1]) * 0.8) ** 2 + ((c - center[2]) * 0.8) ** 2 <= radius ** 2
    assert 10 < inside.sum() < inside.size
    np.testing.assert_array_equal(result, np.where(inside, probability > 0.3, mask))
    far = vt.sphere_threshold(mask, probability, (50, 50, 50), 2.0, ANISOTROPIC)
    np.testing.assert_array_equal(far, mask)
    with pytest.raises(ValueError, match="probability has shape"):
        vt.sphere_threshold(mask, probability[1:], center, radius, ANISOTROPIC)


def test_provenance_merging_keeps_drawn_slices():
    provenance = vt.empty_provenance(5)
    provenance = vt.merge_provenance(provenance, {0: vt.DRAWN, 4: vt.DRAWN})
    provenance = vt.merge_provenance(provenance, [vt.INTERPOLATED] * 5)
    assert provenance == [vt.DRAWN, vt.INTERPOLATED, vt.INTERPOLATED, vt.INTERPOLATED, vt.DRAWN]
    provenance = vt.merge_provenance(provenance, {2: vt.PROPAGATED, 4: vt.PREDICTED})
    assert provenance[2] == vt.PROPAGATED and provenance[4] == vt.DRAWN
    with pytest.raises(ValueError, match="unknown provenance"):
        vt.merge_provenance(provenance, {1: "guessed"})
    with pytest.raises(ValueError, match="entries"):
        vt.merge_provenance(provenance, [None])


@pytest.mark.parametrize("seed", range(6))
def test_tools_computed_in_the_masks_box_equal_the_whole_volume_computation(seed):
    """The tools work inside the mask's bounding box; on masks small, large, and touching the
    volume's faces, the results equal scipy's computed on the whole array."""
    rng = np.random.default_rng(seed)
    shape = (9, 23, 17)
    mask = np.zeros(shape, bool)
    low = [int(rng.integers(0, n // 2)) for n in shape]
    high = [int(rng.integers(lo + 2, n + 1)) for lo, n in zip(low, shape)]
    box = tuple(slice(a, b) for a, b in zip(low, high))
    mask[box] = rng.random(tuple(b - a for a, b in zip(low, high))) > 0.35
    spacing = (2.5, 0.8, 1.1)
    mm = float(rng.choice([0.9, 2.0, 3.3]))
    assert np.array_equal(vt.grow_mm(mask, mm, spacing),
                          ndimage.distance_transform_edt(~mask, sampling=spacing) <= mm)
    assert np.array_equal(vt.shrink_mm(mask, mm, spacing),
                          mask & (ndimage.distance_transform_edt(mask, sampling=spacing) > mm))
    assert np.array_equal(vt.fill_holes_3d(mask), ndimage.binary_fill_holes(mask))
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    assert np.array_equal(vt.remove_islands(mask, min_voxels=3),
                          np.isin(labels, 1 + np.flatnonzero(sizes >= 3)))
    voxel = tuple(int(v) for v in np.argwhere(mask)[0])
    assert np.array_equal(vt.component_at(mask, voxel), labels == labels[voxel])
