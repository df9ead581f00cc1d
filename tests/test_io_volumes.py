"""ScanVolume and the NIfTI reader: the affine kept exactly, real units, refusals in words before any
voxel is decoded, and the one display orientation checked against world coordinates (nibabel's
affines), not against the re-ordering code itself."""
from __future__ import annotations

import gzip
import itertools
import math

import nibabel as nib
import numpy as np
import pytest

from medclipseg.io.volumes import (
    DISPLAY_AXCODES,
    ScanVolume,
    VolumeReadError,
    read_nifti,
    read_volume,
    window_to_uint8,
)
from volume_support import real_t1


def save(path, data, affine, *, dtype=None, slope=None, inter=None, gz=True):
    image = nib.Nifti1Image(np.asarray(data) if dtype is None else np.asarray(data).astype(dtype), affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    if slope is not None:
        image.header.set_slope_inter(slope, inter or 0.0)
    nib.save(image, str(path))
    return path


def oblique_affine(spacing=(0.8, 0.9, 2.5)) -> np.ndarray:
    """A rotated, anisotropic, shifted grid: nothing about it is axis-aligned by accident."""
    angle = math.radians(10)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = (-40.5, 12.25, -7.0)
    return affine


# -------------------------------------------------------------------------- reading


def test_real_t1_reads_with_its_affine_exactly():
    volume = real_t1(crop=False)
    image = nib.load("/usr/share/mricron/templates/ch2bet.nii.gz")
    assert volume.shape == image.shape
    assert np.array_equal(volume.affine, image.affine)
    assert volume.array.dtype == np.float32
    assert np.array_equal(volume.array, np.asarray(image.get_fdata(), dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_integer_and_float_types_read_as_float32_values(tmp_path, dtype):
    data = (np.arange(6 * 5 * 4).reshape(6, 5, 4) % 97).astype(dtype)
    volume = read_nifti(save(tmp_path / "v.nii.gz", data, np.eye(4)))
    assert volume.array.dtype == np.float32
    assert np.array_equal(volume.array, data.astype(np.float32))


def test_scaled_data_is_read_in_real_units(tmp_path):
    stored = np.arange(60, dtype=np.int16).reshape(5, 4, 3)
    volume = read_nifti(save(tmp_path / "ct.nii", stored, np.eye(4), slope=2.0, inter=-1024.0, gz=False))
    assert np.allclose(volume.array, stored * 2.0 - 1024.0)


def test_nan_and_inf_become_the_finite_minimum_with_a_note(tmp_path):
    data = np.linspace(-3, 9, 5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3)
    data[0, 0, 0], data[1, 1, 1], data[2, 2, 2] = np.nan, np.inf, -np.inf
    volume = read_nifti(save(tmp_path / "nan.nii.gz", data, np.eye(4)))
    finite_min = np.nanmin(np.where(np.isfinite(data), data, np.nan))
    assert np.isfinite(volume.array).all()
    assert volume.array[0, 0, 0] == volume.array[1, 1, 1] == volume.array[2, 2, 2] == finite_min
    assert any("NaN" in note for note in volume.conversions)
    all_nan = np.full((4, 4, 3), np.nan, np.float32)
    with pytest.raises(VolumeReadError, match="no finite values"):
        read_nifti(save(tmp_path / "allnan.nii.gz", all_nan, np.eye(4)))


def test_four_d_is_refused_unless_one_volume_is_picked(tmp_path):
    data = np.stack([np.full((4, 5, 3), t, np.float32) for t in range(3)], axis=-1)
    path = save(tmp_path / "fmri.nii.gz", data, np.eye(4))
    with pytest.raises(VolumeReadError, match=r"4-D series of 3 volumes .*volume_index"):
        read_nifti(path)
    picked = read_nifti(path, volume_index=2)
    assert picked.shape == (4, 5, 3) and np.all(picked.array == 2)
    assert any("volume 2 of 3" in note for note in picked.conversions)
    with pytest.raises(VolumeReadError, match="volumes 0..2"):
        read_nifti(path, volume_index=3)
    # A trailing singleton dimension is no series.
    single = read_nifti(save(tmp_path / "one.nii.gz", data[..., :1], np.eye(4)))
    assert single.shape == (4, 5, 3)


def test_two_d_and_one_slice_files_are_images_not_volumes(tmp_path):
    with pytest.raises(VolumeReadError, match="2-D"):
        read_nifti(save(tmp_path / "flat.nii.gz", np.zeros((8, 9), np.float32), np.eye(4)))
    with pytest.raises(VolumeReadError, match="single slice"):
        read_nifti(save(tmp_path / "slab.nii.gz", np.zeros((8, 9, 1), np.float32), np.eye(4)))


def test_truncated_and_damaged_files_are_refused_in_words(tmp_path):
    whole = save(tmp_path / "whole.nii.gz", np.random.default_rng(0).random((30, 30, 20)), np.eye(4)).read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(VolumeReadError, match="truncated"):
        read_nifti(cut)
    plain = save(tmp_path / "plain.nii", np.zeros((10, 10, 10), np.float32), np.eye(4), gz=False).read_bytes()
    short = tmp_path / "short.nii"
    short.write_bytes(plain[:-100])
    with pytest.raises(VolumeReadError, match="truncated"):
        read_nifti(short)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"not a nifti header" * 40))
    with pytest.raises(VolumeReadError, match="not a NIfTI"):
        read_nifti(junk)
    with pytest.raises(VolumeReadError, match="empty"):
        read_nifti(b"", name="nothing.nii")


def _header_only(shape, dtype=np.int16) -> bytes:
    """A NIfTI-1 header claiming ``shape`` followed by a few bytes: what a huge scan's first block looks like."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    return gzip.compress(header.binaryblock + b"\0" * 4 + b"\1" * 1000)


@pytest.mark.parametrize("shape, words", [
    ((512, 512, 2000), r"2,000 voxels along one side .*MEDCLIPSEG_MAX_VOLUME_SIDE"),
    ((2048, 2048, 1000), r"4,194,304,000 voxels .*MEDCLIPSEG_MAX_VOLUME_VOXELS"),
])
def test_huge_volumes_are_refused_from_the_header_before_decoding(shape, words, monkeypatch):
    monkeypatch.setenv("MEDCLIPSEG_MAX_VOLUME_SIDE", "1500")
    monkeypatch.setenv("MEDCLIPSEG_MAX_VOLUME_VOXELS", "400000000")
    if shape == (2048, 2048, 1000):
        monkeypatch.setenv("MEDCLIPSEG_MAX_VOLUME_SIDE", "4096")
    with pytest.raises(VolumeReadError, match=words):
        read_nifti(_header_only(shape), name="huge.nii.gz")


def test_a_file_over_the_byte_limit_is_refused_before_reading(tmp_path, monkeypatch):
    path = save(tmp_path / "v.nii", np.zeros((20, 20, 20), np.float32), np.eye(4), gz=False)
    monkeypatch.setenv("MEDCLIPSEG_MAX_VOLUME_BYTES", "1000")
    with pytest.raises(VolumeReadError, match="MEDCLIPSEG_MAX_VOLUME_BYTES"):
        read_nifti(path)


def test_read_volume_dispatches_nifti_names(tmp_path):
    path = save(tmp_path / "scan.nii.gz", np.ones((4, 4, 3), np.float32), oblique_affine())
    volume = read_volume(path)
    assert volume.shape == (4, 4, 3) and np.allclose(volume.affine, oblique_affine())


# -------------------------------------------------------------------------- the display orientation


def _every_voxel_order(volume: ScanVolume):
    """The same scan stored in each of the 48 voxel orders (3 axes permuted, each flipped or not)."""
    for permutation in itertools.permutations(range(3)):
        for flips in itertools.product((False, True), repeat=3):
            array = np.transpose(volume.array, permutation)
            affine = volume.affine[:, list(permutation) + [3]].copy()
            for axis, flip in enumerate(flips):
                if flip:
                    n = array.shape[axis]
                    array = np.flip(array, axis)
                    affine[:, 3] = affine[:, 3] + affine[:, axis] * (n - 1)
                    affine[:, axis] = -affine[:, axis]
            yield ScanVolume(array=np.ascontiguousarray(array), affine=affine, modality="MR")


def test_every_voxel_order_shows_the_same_slices():
    t1 = real_t1(crop=True)
    block = ScanVolume(array=t1.array[:20, :24, :10].copy(), affine=t1.affine @ np.diag([1.0, 1.0, 3.0, 1.0]),
                       modality="MR")
    reference = block.to_display()
    for variant in _every_voxel_order(block):
        assert variant.slice_plane == "axial"  # the 3 mm axis, whichever file axis holds it
        assert np.array_equal(variant.to_display(), reference)
        assert np.allclose(variant.display_affine(), block.display_affine())
        # And back to each file's own grid, exactly.
        assert np.array_equal(variant.from_display(reference), variant.array)


@pytest.mark.parametrize("plane", list(DISPLAY_AXCODES))
def test_display_voxels_sit_where_their_file_voxels_are(plane):
    """Display voxel (s, r, c) and the file voxel it came from have the same world coordinates, and
    the display axes point the way the convention says (screen right = patient left, and so on)."""
    rng = np.random.default_rng(1)
    array = rng.random((7, 6, 5)).astype(np.float32)
    volume = ScanVolume(array=array, affine=oblique_affine(), modality="MR")
    display = volume.to_display(plane=plane)
    display_affine = volume.display_affine(plane)
    indices = np.argwhere(np.ones(display.shape, bool))
    world = nib.affines.apply_affine(display_affine, indices)
    file_index = np.rint(nib.affines.apply_affine(np.linalg.inv(volume.affine), world)).astype(int)
    assert np.array_equal(display[tuple(indices.T)], array[tuple(file_index.T)])
    assert "".join(nib.aff2axcodes(display_affine)) == "".join(DISPLAY_AXCODES[plane])


def test_slice_plane_is_the_thickest_world_axis():
    assert ScanVolume(array=np.zeros((4, 4, 4), np.float32), affine=np.diag([1, 1, 5.0, 1])).slice_plane == "axial"
    assert ScanVolume(array=np.zeros((4, 4, 4), np.float32), affine=np.diag([1, 4.0, 1, 1])).slice_plane == "coronal"
    assert ScanVolume(array=np.zeros((4, 4, 4), np.float32), affine=np.diag([3.0, 1, 1, 1])).slice_plane == "sagittal"
    assert ScanVolume(array=np.zeros((4, 4, 4), np.float32), affine=np.eye(4)).slice_plane == "axial"  # ties


def test_window_maps_its_ends_to_0_and_255():
    values = np.array([-1000.0, 40 - 200, 40.0, 40 + 200, 3000.0], np.float32)
    assert window_to_uint8(values, (40, 400)).tolist() == [0, 0, 128, 255, 255]
