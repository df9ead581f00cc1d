"""Memory that stays bounded: 8 worst-case uploads at once stay under README's stated peak, and the
size limits refuse large inputs from their headers, before anything is decoded or written.

The concurrent run is benchmarks/memory_bounds.py in its own process (so the resident set size is
that run's alone), at a pixel limit of 1 MP so that it takes seconds; README's *Memory* section
states the bound as a formula of the limits and gives the figure at the production limits.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import memory_bounds  # noqa: E402

from medclipseg.io.images import ImageReadError, read_image  # noqa: E402


def test_eight_concurrent_worst_case_uploads_stay_under_the_stated_peak():
    # A clean environment: the run's memory must not depend on what earlier tests left in this one.
    environment = {key: value for key, value in os.environ.items()
                   if key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_bounds.py"), "--max-pixels",
                             "1000000", "--workers", "8", "--cache-mb", "64", "--json"],
                            capture_output=True, text=True, timeout=240, cwd=ROOT, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    statuses = [status for _, _, status in report["files"].values()]
    assert sum("Segmented" in status for status in statuses) == 7           # every file at the limits works
    assert sum("too large" in status for status in statuses) == 1          # the one over them is refused
    expected = memory_bounds.bound_mb(report["baseline_mb"], 1_000_000, 8, 64)
    assert report["bound_mb"] == pytest.approx(expected, abs=0.2)
    assert report["peak_mb"] <= report["bound_mb"], {key: value for key, value in report.items() if key != "files"}


def test_a_multi_frame_dicom_over_the_byte_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    path = tmp_path / "cine.dcm"
    memory_bounds._dicom(path, np.zeros((40, 64, 64), np.uint16))   # 40 x 64 x 64 x 2 = 327,680 bytes
    monkeypatch.setenv("MEDCLIPSEG_MAX_VOLUME_BYTES", "300000")
    monkeypatch.setattr("pydicom.pixels.pixel_array", lambda *a, **k: pytest.fail("decoded before the check"))
    # The file itself (327 kB of pixels + header) is over the limit too: checked before it is read.
    with pytest.raises(ImageReadError, match=r"'.*cine.dcm' is too large \(\d[\d,]* bytes\); the limit for a file "
                                             r"is 300,000 bytes \(set MEDCLIPSEG_MAX_VOLUME_BYTES"):
        read_image(path)
    # Within the file limit, the decoded frames are checked from the header: here one that claims
    # 4,000 frames (32 MB once decoded) in a file of 40.
    import pydicom

    monkeypatch.setenv("MEDCLIPSEG_MAX_VOLUME_BYTES", "1000000")
    dataset = pydicom.dcmread(path)
    dataset.NumberOfFrames = 4000
    dataset.save_as(path)
    with pytest.raises(ImageReadError, match=r"'.*cine.dcm' is too large: its pixel data \(4,000 frames of 64 x 64, "
                                             r"1 sample\(s\) of 16 bits\) would take 32,768,000 bytes; the limit is "
                                             r"1,000,000 bytes"):
        read_image(path)
    # And their pixels against the voxel limit.
    dataset.NumberOfFrames = 40
    dataset.save_as(path)
    monkeypatch.setenv("MEDCLIPSEG_MAX_VOLUME_VOXELS", "100000")
    with pytest.raises(ImageReadError, match=r"its 40 frames of 64 x 64 pixels hold 163,840 values; the limit is "
                                             r"100,000 \(set MEDCLIPSEG_MAX_VOLUME_VOXELS"):
        read_image(path.read_bytes(), name="cine.dcm")


def test_a_multi_frame_dicom_decodes_only_its_middle_frame(tmp_path, monkeypatch):
    import pydicom.pixels

    frames = np.arange(5 * 16 * 16, dtype=np.uint16).reshape(5, 16, 16)
    path = tmp_path / "frames.dcm"
    memory_bounds._dicom(path, frames, rescale=(1.0, 0.0))
    asked = []
    original = pydicom.pixels.pixel_array

    def spy(src, **kwargs):
        asked.append(kwargs.get("index"))
        return original(src, **kwargs)

    monkeypatch.setattr(pydicom.pixels, "pixel_array", spy)
    loaded = read_image(path)
    assert asked == [2]
    assert loaded.original_shape == (5, 16, 16)
    assert any("multi-frame DICOM (5 frames): middle frame 2 used" in note for note in loaded.conversions)
    low, high = frames[2].min(), frames[2].max()
    expected = np.clip(np.rint((frames[2] - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)
    assert np.array_equal(loaded.bgr[..., 0], expected)


def test_an_image_file_over_the_byte_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "big.bmp"
    import cv2

    cv2.imwrite(str(path), np.zeros((100, 100, 3), np.uint8))
    monkeypatch.setenv("MEDCLIPSEG_MAX_VOLUME_BYTES", "1000")
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read before the check"))
    with pytest.raises(ImageReadError, match="is too large .* the limit for a file is 1,000 bytes"):
        read_image(path)


def test_sixteen_bit_colour_converts_without_a_whole_image_float64_copy(monkeypatch):
    """The conversion works a block of rows at a time; the largest float64 temporary is one block."""
    from medclipseg.io import images

    rng = np.random.default_rng(0)
    array = rng.integers(0, 65536, size=(300, 200, 3), dtype=np.uint16)
    monkeypatch.setattr(images, "CHUNK_VALUES", 6000)
    largest = []
    original = np.ndarray.astype

    class Spy(np.ndarray):
        def astype(self, dtype, *args, **kwargs):
            out = original(np.asarray(self), dtype, *args, **kwargs)
            if np.dtype(dtype) == np.float64:
                largest.append(out.size)
            return out

    out = images._to_uint8(array.view(Spy), [])
    low, high = float(array.min()), float(array.max())
    expected = np.clip(np.rint((array.astype(np.float64) - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(out), expected)
    assert largest and max(largest) <= 6000
