"""3-D metrics (Dice, NSD and HD95 in mm on anisotropic grids): hand-computed cases and MONAI."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from medclipseg.evaluation.metrics import dice_3d, hausdorff95_3d, surface_dice_3d

SPACING = (0.8, 0.8, 3.0)
SHAPE = (48, 44, 16)


def _box(shape, low, high):
    mask = np.zeros(shape, dtype=bool)
    mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = True
    return mask


def _ellipsoid(shape, centre_mm, radii_mm, spacing=SPACING):
    """Voxels whose centres lie inside an ellipsoid given in millimetres."""
    grids = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre_mm, radii_mm))
    return inside <= 1.0


def _blob(shape, seed, smoothing=(2.5, 2.5, 1.0), level=0.6):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), smoothing)
    return field > np.quantile(field, level)


# -------------------------------------------------------------------------- hand-computed cases


def test_dice_3d_counts_voxels():
    truth = _box((6, 6, 4), (0, 0, 0), (2, 3, 2))   # 12 voxels
    pred = _box((6, 6, 4), (0, 0, 0), (2, 2, 2))    # 8 voxels, all inside truth
    assert dice_3d(pred, truth) == pytest.approx(2 * 8 / 20)
    assert dice_3d(truth, truth) == 1.0
    assert dice_3d(pred, _box((6, 6, 4), (4, 4, 2), (6, 6, 4))) == 0.0
    # uint8 0/255 and float inputs count as masks (> 0)
    assert dice_3d(pred.astype(np.uint8) * 255, truth.astype(np.float32)) == pytest.approx(0.8)


def test_single_voxels_one_slice_apart_are_three_millimetres_apart():
    a = _box((5, 5, 5), (2, 2, 1), (3, 3, 2))
    b = _box((5, 5, 5), (2, 2, 2), (3, 3, 3))  # the next voxel along k: 3.0 mm away
    assert surface_dice_3d(a, b, SPACING, tolerance_mm=2.99) == 0.0
    assert surface_dice_3d(a, b, SPACING, tolerance_mm=3.0) == 1.0
    assert hausdorff95_3d(a, b, SPACING) == pytest.approx(3.0)
    c = _box((5, 5, 5), (3, 2, 1), (4, 3, 2))  # the next voxel along i: 0.8 mm away
    assert surface_dice_3d(a, c, SPACING, tolerance_mm=0.8) == 1.0
    assert hausdorff95_3d(a, c, SPACING) == pytest.approx(0.8)
    # a diagonal neighbour: sqrt(0.8^2 + 3^2)
    d = _box((5, 5, 5), (3, 2, 2), (4, 3, 3))
    assert hausdorff95_3d(a, d, SPACING) == pytest.approx(math.hypot(0.8, 3.0))


def test_cube_shifted_by_one_voxel_by_hand():
    # A 4x4x4 cube has 64 - 8 = 56 surface voxels (the 2x2x2 core is interior). Shifted by one
    # voxel along i, 36 of each cube's surface voxels lie on the other's surface (the rings of the
    # three shared layers) and 20 lie one voxel (0.8 mm) from it (the leading face and the core of
    # the trailing face).
    truth = _box((8, 8, 8), (1, 2, 2), (5, 6, 6))
    pred = _box((8, 8, 8), (2, 2, 2), (6, 6, 6))
    assert surface_dice_3d(pred, truth, SPACING, tolerance_mm=0.5) == pytest.approx(72 / 112)
    assert surface_dice_3d(pred, truth, SPACING, tolerance_mm=0.8) == 1.0
    assert hausdorff95_3d(pred, truth, SPACING) == pytest.approx(0.8)
    assert dice_3d(pred, truth) == pytest.approx(2 * 48 / 128)
    # The same shift along k is 3 mm; the 4 core voxels of a trailing face are then nearer to the
    # other surface in-plane (the ring of their own layer, 0.8 mm) than through-plane (3 mm).
    shifted_k = _box((8, 8, 8), (1, 2, 3), (5, 6, 7))
    assert surface_dice_3d(shifted_k, truth, SPACING, tolerance_mm=0.5) == pytest.approx(72 / 112)
    assert surface_dice_3d(shifted_k, truth, SPACING, tolerance_mm=2.0) == pytest.approx(80 / 112)
    assert surface_dice_3d(shifted_k, truth, SPACING, tolerance_mm=3.0) == 1.0
    assert hausdorff95_3d(shifted_k, truth, SPACING) == pytest.approx(3.0)


def test_masks_on_the_array_border_have_a_surface_there():
    # Voxels outside the array count as background: a mask filling the whole array is all surface
    # on its faces; the same block inside a bigger array gives the same numbers.
    full = np.ones((4, 4, 4), dtype=bool)
    half = _box((4, 4, 4), (0, 0, 0), (2, 4, 4))
    inside_full = np.pad(full, 2)
    inside_half = np.pad(half, 2)
    for tolerance in (0.5, 0.8, 1.6, 2.0):
        assert surface_dice_3d(half, full, SPACING, tolerance) == pytest.approx(
            surface_dice_3d(inside_half, inside_full, SPACING, tolerance))
    assert hausdorff95_3d(half, full, SPACING) == pytest.approx(hausdorff95_3d(inside_half, inside_full, SPACING))


def test_empty_mask_conventions():
    empty = np.zeros(SHAPE, dtype=bool)
    box = _box(SHAPE, (10, 10, 4), (20, 20, 8))
    assert dice_3d(empty, empty) == 1.0 and dice_3d(box, empty) == 0.0 and dice_3d(empty, box) == 0.0
    assert surface_dice_3d(empty, empty, SPACING, 2.0) == 1.0
    assert surface_dice_3d(box, empty, SPACING, 2.0) == 0.0 and surface_dice_3d(empty, box, SPACING, 2.0) == 0.0
    assert hausdorff95_3d(empty, empty, SPACING) == 0.0
    assert hausdorff95_3d(box, empty, SPACING) == math.inf and hausdorff95_3d(empty, box, SPACING) == math.inf


def test_isotropic_spacing_may_be_one_number():
    a, b = _blob(SHAPE, 1), _blob(SHAPE, 2)
    assert surface_dice_3d(a, b, 1.5, 2.0) == surface_dice_3d(a, b, (1.5, 1.5, 1.5), 2.0)
    assert hausdorff95_3d(a, b, [1.5]) == hausdorff95_3d(a, b, (1.5, 1.5, 1.5))


@pytest.mark.parametrize("call, words", [
    (lambda: dice_3d(np.ones((4, 4)), np.ones((4, 4))), "3-D mask"),
    (lambda: dice_3d(np.ones((4, 4, 4)), np.ones((4, 4, 5))), "same voxel grid"),
    (lambda: surface_dice_3d(np.ones((4, 4, 4)), np.ones((4, 4, 4)), (1, 1), 2.0), "spacing_mm"),
    (lambda: surface_dice_3d(np.ones((4, 4, 4)), np.ones((4, 4, 4)), (1, 0, 1), 2.0), "positive"),
    (lambda: surface_dice_3d(np.ones((4, 4, 4)), np.ones((4, 4, 4)), 1.0, -1.0), "tolerance_mm"),
    (lambda: hausdorff95_3d(np.ones((4, 4, 4)), np.ones((4, 4, 4)), (1.0, float("nan"), 1.0)), "spacing_mm"),
])
def test_bad_arguments_are_refused_in_words(call, words):
    with pytest.raises(ValueError, match=words):
        call()


def test_the_public_module_re_exports_them():
    import medclipseg.metrics as public

    assert public.dice_3d is dice_3d
    assert public.surface_dice_3d is surface_dice_3d
    assert public.hausdorff95_3d is hausdorff95_3d
    assert {"dice_3d", "surface_dice_3d", "hausdorff95_3d"} <= set(public.__all__)


# -------------------------------------------------------------------------- MONAI as the reference


def _monai():
    pytest.importorskip("monai", reason="the reference needs MONAI (requirements-dev.txt)")
    import torch
    from monai import metrics

    return torch, metrics


def _tensor(torch, mask):
    return torch.as_tensor(np.ascontiguousarray(mask))[None, None].float()


def _monai_nsd(pred, truth, spacing, tolerance):
    torch, metrics = _monai()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty classes
        value = metrics.compute_surface_dice(_tensor(torch, pred), _tensor(torch, truth), [tolerance],
                                             include_background=True, spacing=list(spacing))
    return float(value.item())


def _monai_hd95(pred, truth, spacing):
    torch, metrics = _monai()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = metrics.compute_hausdorff_distance(_tensor(torch, pred), _tensor(torch, truth),
                                                   include_background=True, percentile=95, spacing=list(spacing))
    return float(value.item())


def _monai_dice(pred, truth):
    torch, metrics = _monai()
    value = metrics.compute_dice(_tensor(torch, pred), _tensor(torch, truth), include_background=True,
                                 ignore_empty=False)
    return float(value.item())


def _pairs():
    """Shapes of several kinds on an anisotropic grid: ellipsoids in mm (offset, resized), boxes,
    random smooth blobs, and blobs cut by the array's border."""
    pairs = [
        (_ellipsoid(SHAPE, (18.0, 17.0, 22.0), (9.0, 8.0, 14.0)),
         _ellipsoid(SHAPE, (19.5, 16.0, 24.0), (10.0, 7.0, 12.0))),
        (_ellipsoid(SHAPE, (18.0, 17.0, 22.0), (9.0, 8.0, 14.0)),
         _ellipsoid(SHAPE, (18.0, 17.0, 22.0), (9.0, 8.0, 14.0))),
        (_box(SHAPE, (5, 6, 3), (30, 25, 11)), _box(SHAPE, (7, 5, 4), (33, 22, 12))),
        (_box(SHAPE, (5, 6, 3), (30, 25, 11)), _ellipsoid(SHAPE, (14.0, 12.0, 20.0), (8.0, 6.0, 9.0))),
        (_box(SHAPE, (0, 0, 0), (20, 44, 16)), _box(SHAPE, (2, 0, 0), (24, 40, 16))),  # on the border
    ]
    for seed in range(4):
        pairs.append((_blob(SHAPE, 10 + seed), _blob(SHAPE, 20 + seed, level=0.55)))
    # a blob against a slightly eroded and shifted copy of itself: most distances under 3 mm
    blob = _blob(SHAPE, 99)
    pairs.append((np.roll(ndimage.binary_erosion(blob), 1, axis=0), blob))
    return pairs


@pytest.mark.parametrize("tolerance", [0.5, 1.0, 2.0, 3.0, 5.0])
def test_surface_dice_matches_monai(tolerance):
    for pred, truth in _pairs():
        expected = _monai_nsd(pred, truth, SPACING, tolerance)
        assert surface_dice_3d(pred, truth, SPACING, tolerance) == pytest.approx(expected, abs=1e-6)


def test_surface_dice_matches_monai_on_other_spacings():
    pred, truth = _blob(SHAPE, 5), _blob(SHAPE, 6, level=0.5)
    for spacing in ((1.0, 1.0, 1.0), (0.5, 2.0, 1.25), (3.0, 0.7, 0.7)):
        for tolerance in (1.0, 2.5):
            expected = _monai_nsd(pred, truth, spacing, tolerance)
            assert surface_dice_3d(pred, truth, spacing, tolerance) == pytest.approx(expected, abs=1e-6)


def test_spacing_changes_the_answer_as_monai_says():
    # The same voxels at two spacings give different NSDs: the spacing is used, per axis.
    pred, truth = _pairs()[0]
    thin = surface_dice_3d(pred, truth, (0.8, 0.8, 0.8), 1.0)
    thick = surface_dice_3d(pred, truth, SPACING, 1.0)
    assert thin != thick
    assert thin == pytest.approx(_monai_nsd(pred, truth, (0.8, 0.8, 0.8), 1.0), abs=1e-6)


def test_hausdorff95_matches_monai():
    for pred, truth in _pairs():
        expected = _monai_hd95(pred, truth, SPACING)
        assert hausdorff95_3d(pred, truth, SPACING) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_dice_matches_monai():
    for pred, truth in _pairs():
        assert dice_3d(pred, truth) == pytest.approx(_monai_dice(pred, truth), abs=1e-6)


def test_empty_masks_where_monai_gives_nan_or_inf():
    empty = np.zeros(SHAPE, dtype=bool)
    box = _box(SHAPE, (10, 10, 4), (20, 20, 8))
    assert math.isnan(_monai_nsd(empty, empty, SPACING, 2.0)) and surface_dice_3d(empty, empty, SPACING, 2.0) == 1.0
    assert _monai_nsd(box, empty, SPACING, 2.0) == 0.0 == surface_dice_3d(box, empty, SPACING, 2.0)
    assert _monai_nsd(empty, box, SPACING, 2.0) == 0.0 == surface_dice_3d(empty, box, SPACING, 2.0)
    # MONAI's 95th percentile of infinite distances is nan; ours stays inf, like its maximum.
    assert math.isnan(_monai_hd95(box, empty, SPACING)) and math.isinf(hausdorff95_3d(box, empty, SPACING))
    assert math.isnan(_monai_hd95(empty, empty, SPACING)) and hausdorff95_3d(empty, empty, SPACING) == 0.0
