"""The three plane views of a stored volume, checked against the scan read from its file: each view
equals ``ScanVolume.to_display(plane)`` of the file's own grid (an independent path through nibabel),
crosshair points land on the same world position, and writes through a view reach the stored mask."""
from __future__ import annotations

import itertools
import math

import nibabel as nib
import numpy as np
import pytest

from medclipseg.annotation import volume_planes
from medclipseg.annotation.store import AnnotationStore
from medclipseg.annotation.volume_planes import PLANES, PlaneGeometry
from medclipseg.io.volumes import ScanVolume

from test_annotation_volumes import T1, fake_prediction


def _volume(axcodes: str, shape=(7, 9, 5), spacing=(0.8, 1.1, 3.0)) -> ScanVolume:
    """A volume whose file axes run along ``axcodes`` (e.g. "LPS", "ASR"), with anisotropic voxels."""
    ornt = nib.orientations.axcodes2ornt(tuple(axcodes))
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    for file_axis, (world_axis, sign) in enumerate(ornt):
        affine[int(world_axis), file_axis] = sign * spacing[file_axis]
    affine[:3, 3] = (-12.0, 30.5, 7.25)
    rng = np.random.default_rng(len(axcodes) + sum(map(ord, axcodes)))
    return ScanVolume(array=rng.normal(size=shape).astype(np.float32), affine=affine, modality="MR")


ORDERS = ["RAS", "LPS", "ASR", "SLP", "PIR"]


@pytest.mark.parametrize("axcodes", ORDERS)
def test_each_view_is_the_file_reformatted_in_that_plane(axcodes):
    volume = _volume(axcodes)
    stored_plane = volume.slice_plane
    stored = volume.to_display(plane=stored_plane)
    geometry = PlaneGeometry(stored_plane, stored.shape, tuple(volume.display_spacing(stored_plane)))
    for plane in PLANES:
        expected = volume.to_display(plane=plane)
        view = geometry.view(stored, plane)
        assert view.shape == expected.shape == geometry.shape(plane)
        assert np.array_equal(view, expected)
        assert geometry.spacing(plane) == pytest.approx(volume.display_spacing(plane))
        # The axes description: flipping and transposing the stored array by it gives the view.
        axes = geometry.axes(plane)
        rebuilt = np.transpose(stored, [axis for axis, _ in axes])
        for position, (_, flipped) in enumerate(axes):
            if flipped:
                rebuilt = np.flip(rebuilt, axis=position)
        assert np.array_equal(rebuilt, expected)


@pytest.mark.parametrize("axcodes", ORDERS)
def test_crosshair_points_are_the_same_place_in_the_patient(axcodes):
    volume = _volume(axcodes)
    stored_plane = volume.slice_plane
    stored = volume.to_display(plane=stored_plane)
    geometry = PlaneGeometry(stored_plane, stored.shape, tuple(volume.display_spacing(stored_plane)))
    rng = np.random.default_rng(0)
    for from_plane, to_plane in itertools.product(PLANES, PLANES):
        shape = geometry.shape(from_plane)
        for _ in range(5):
            point = tuple(int(rng.integers(0, n)) for n in shape)
            mapped = geometry.point(point, from_plane, to_plane)
            world_from = volume.display_affine(from_plane) @ np.array(point + (1,), float)
            world_to = volume.display_affine(to_plane) @ np.array(mapped + (1,), float)
            assert np.allclose(world_from, world_to)
    with pytest.raises(ValueError, match="outside"):
        geometry.point((99, 0, 0), "axial", "coronal")


def test_painting_a_view_writes_the_stored_mask():
    volume = _volume("LPS")
    stored_plane = volume.slice_plane
    mask = np.zeros(volume.display_shape(stored_plane), bool)
    geometry = PlaneGeometry(stored_plane, mask.shape, tuple(volume.display_spacing(stored_plane)))
    other = next(p for p in PLANES if p != stored_plane)
    view = geometry.view(mask, other)
    assert np.shares_memory(view, mask)
    view[2, 1:3, 0:2] = True
    # The same voxels, found through the file's grid and the other plane's display order.
    expected_other = np.zeros(volume.display_shape(other), bool)
    expected_other[2, 1:3, 0:2] = True
    expected = volume.to_display(volume.from_display(expected_other, plane=other), plane=stored_plane)
    assert np.array_equal(mask, expected) and mask.sum() == 4
    crossed = geometry.stored_slices(other, 2)
    assert set(np.nonzero(mask.any(axis=(1, 2)))[0]) <= set(crossed)
    assert geometry.stored_slices(stored_plane, 4) == [4]


def test_loaded_volume_serves_plane_slices_of_the_stored_case(tmp_path):
    if not T1.is_file():
        pytest.skip("Debian's mricron-data (the real T1) is not installed")
    from medclipseg.io.volumes import read_nifti

    full = read_nifti(T1)
    shift = np.eye(4)
    shift[:3, 3] = (60, 70, 70)
    # Stored in another voxel order than the file's (flipped and permuted), as a DICOM series may be.
    array = np.ascontiguousarray(full.array[60:100, 70:114, 70:82].transpose(2, 0, 1)[::-1])
    affine = full.affine @ shift
    swap = np.zeros((4, 4))
    swap[3, 3] = 1
    swap[2, 0] = -1     # new axis 0 is old k, flipped
    swap[2, 3] = array.shape[0] - 1
    swap[0, 1] = 1
    swap[1, 2] = 1
    volume = ScanVolume(array=array, affine=affine @ swap, modality="MR", name="t1.nii.gz")
    prediction = fake_prediction(volume)
    store = AnnotationStore(tmp_path / "a.db")
    case, prediction_id = store.add_volume_case_with_prediction(volume, prediction, prompt="brain",
                                                               original_name="t1.nii.gz")
    volume_planes.LOADED.clear()
    loaded = volume_planes.loaded_volume(store, case.id, prediction_id)
    assert volume_planes.loaded_volume(store, case.id, prediction_id) is loaded
    mask_display = volume.to_display(prediction.mask)
    window = (float(np.median(volume.array)), float(np.ptp(volume.array)))
    for plane in PLANES:
        scan = volume.to_display(plane=plane)
        depth = scan.shape[0]
        for index in (0, depth // 2, depth - 1):
            shown = volume_planes.plane_slice(loaded, plane, index, mask_display, window)
            low, width = window[0] - window[1] / 2, window[1]
            grey = np.clip(np.rint((scan[index] - low) / width * 255), 0, 255)
            assert np.abs(shown.image_rgb[..., 0].astype(int) - grey).max() <= 1
            assert np.abs(shown.probability - volume.to_display(prediction.probability, plane=plane)[index]).max() \
                <= 1 / 510 + 1e-6
            assert np.abs(shown.entropy - volume.to_display(prediction.entropy, plane=plane)[index]).max() \
                <= math.log(2) / 510 + 1e-6
            assert np.array_equal(shown.mask, volume.to_display(prediction.mask, plane=plane)[index])
            assert shown.spacing == pytest.approx(volume.display_spacing(plane)[1:])
        strip = volume_planes.plane_strip(loaded, plane)
        expected = volume.to_display(prediction.entropy, plane=plane).mean(axis=(1, 2))
        assert np.allclose(strip, expected, atol=math.log(2) / 510 + 1e-6)
    with pytest.raises(ValueError, match="slices 0 to"):
        volume_planes.plane_slice(loaded, "coronal", 10_000, mask_display, window)
    # The 8-bit maps as propagation reads them: a slice at a time, in float32.
    probability = loaded.probability_map()
    assert probability.shape == mask_display.shape
    assert probability[3].dtype == np.float32
    assert np.abs(probability[3] - volume.to_display(prediction.probability)[3]).max() <= 1 / 510 + 1e-6
