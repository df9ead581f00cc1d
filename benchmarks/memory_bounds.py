"""Peak memory of one app process while 8 worst-case uploads arrive at once.

    python benchmarks/memory_bounds.py [--max-pixels 4000000] [--workers 8] [--cache-mb 64] [--json]

Sets the image and volume limits (``MEDCLIPSEG_MAX_PIXELS``, ``MEDCLIPSEG_MAX_VOLUME_BYTES``) and
the cache budget (``MEDCLIPSEG_CACHE_MB``) from its options, writes one file of each worst kind at
those limits (16-bit RGBA PNG, 16-bit RGB TIFF, float32 TIFF, 8-bit JPEG and BMP, a 16-bit CT DICOM,
a multi-frame DICOM whose frames fill the byte limit, and a PNG whose header claims more than the
pixel limit), then starts ``--workers`` threads that each, at the same moment, do what the app does
with an upload: ``handlers.upload`` (the preview) then ``handlers.segment`` (read, predict, store,
open in the editor), on an ``AnnotationService`` with the shipped demo model and a new SQLite store.

Reports the resident set size before the uploads (the process with the model loaded) and its peak
during them (VmHWM, the kernel's own high-water mark, reset when the uploads start), both in MB, and the bound of
README's *Memory* section: ``baseline + workers x 60 bytes x max_pixels + cache``. The last line is
``max_pixels=<n> workers=<w> baseline_mb=<b> peak_mb=<p> bound_mb=<B> ok=<True|False>``; ``--json``
prints one JSON object instead. tests/test_memory_bounds.py runs it at small limits.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# Bytes per pixel of the limit one upload may hold at its peak (README, *Memory*): the decoded file
# (at most 8 bytes a pixel: 16-bit RGBA), its 8-bit BGR copy, the float32 maps of the prediction, and
# the temporaries of scoring, storing and showing them. Measured: 57 for a 16-bit RGBA PNG alone
# (115 before the reads stopped making whole-image float64 copies).
BYTES_PER_LIMIT_PIXEL = 60


def bound_mb(baseline_mb: float, max_pixels: int, workers: int, cache_mb: float) -> float:
    return baseline_mb + workers * BYTES_PER_LIMIT_PIXEL * max_pixels / 1e6 + cache_mb


def _side(max_pixels: int) -> tuple:
    """(height, width) of the largest image the limit allows, about 4:3."""
    width = int((max_pixels * 4 / 3) ** 0.5)
    return max_pixels // width, width


def _dicom(path: Path, frames: np.ndarray, *, rescale=(1.0, -1024.0)) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PixelSpacing = [0.7, 0.7]
    ds.Rows, ds.Columns = frames.shape[-2:]
    if frames.ndim == 3:
        ds.NumberOfFrames = frames.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = frames.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def write_worst_cases(folder: Path, max_pixels: int, max_volume_bytes: int) -> list:
    """One file per worst kind at the limits; the last is refused from its header."""
    import cv2

    rng = np.random.default_rng(0)
    height, width = _side(max_pixels)
    yy, xx = np.mgrid[:height, :width]
    ramp = ((yy * 7 + xx * 3) % 4096).astype(np.uint16) * 16
    noise = rng.integers(0, 64, size=(height, width), dtype=np.uint16)
    grey16 = ramp + noise
    files = []

    def add(name, array, params=()):
        path = folder / name
        if not cv2.imwrite(str(path), array, list(params)):
            raise RuntimeError(f"could not write {path}")
        files.append(path)

    add("rgba16.png", np.dstack([grey16, grey16[::-1], grey16[:, ::-1], 65535 - noise * 100]),
        (cv2.IMWRITE_PNG_COMPRESSION, 1))
    add("rgb16.tif", np.dstack([grey16, grey16[::-1], grey16[:, ::-1]]))
    add("grey_float.tif", grey16.astype(np.float32) / 7.0)
    add("colour.jpg", np.dstack([(grey16 >> 8).astype(np.uint8)] * 3), (cv2.IMWRITE_JPEG_QUALITY, 90))
    add("colour.bmp", np.dstack([(grey16 >> 8).astype(np.uint8)] * 3))
    single = folder / "ct.dcm"
    _dicom(single, grey16 >> 4)
    files.append(single)
    # As many frames as the byte limit allows (uint16), at least 3, of a quarter of the pixel limit.
    frame_shape = (height // 2, width // 2)
    count = max(3, int(max_volume_bytes // (2 * frame_shape[0] * frame_shape[1])) - 1)
    frames = np.broadcast_to((grey16[: frame_shape[0], : frame_shape[1]] >> 4), (count,) + frame_shape)
    multi = folder / "multiframe.dcm"
    _dicom(multi, frames)
    files.append(multi)
    # A PNG whose header says 20 x the limit (refused before decoding).
    huge = folder / "huge_header.png"
    side = int((20 * max_pixels) ** 0.5)
    _huge_png(huge, side)
    files.append(huge)
    return files


def _huge_png(path: Path, side: int) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * side) * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def rss_mb() -> float:
    """The resident set size now, from the kernel's own account (/proc/self/statm: pages)."""
    import os

    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def reset_peak() -> bool:
    """Start the kernel's high-water mark of resident memory afresh (Linux 4.0+: writing 5 to
    /proc/self/clear_refs), so that the peak counts the uploads only, not the setup before them
    (writing the test files, loading the model). False where the kernel refuses it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    """The high-water mark of resident memory since the last reset_peak (VmHWM), else since the
    process began (ru_maxrss)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e3  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kilobytes on Linux


def run(max_pixels: int, workers: int, cache_mb: int, samples: int = 2) -> dict:
    max_volume_bytes = 12 * max_pixels  # room for 24 quarter-size 16-bit frames
    os.environ["MEDCLIPSEG_MAX_PIXELS"] = str(max_pixels)
    os.environ["MEDCLIPSEG_MAX_VOLUME_BYTES"] = str(max_volume_bytes)
    os.environ["MEDCLIPSEG_CACHE_MB"] = str(cache_mb)

    from medclipseg.annotation.scratch import ScratchSpace
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore
    from medclipseg.app import handlers
    from medclipseg.inference.predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="medclipseg-memory-") as tmp:
        folder = Path(tmp)
        files = write_worst_cases(folder, max_pixels, max_volume_bytes)
        predictor = Predictor.from_pretrained("demo", device="cpu")
        store = AnnotationStore(folder / "annotations.db", files_dir=folder / "files")
        service = AnnotationService(store, predictor, num_samples=samples, scratch=ScratchSpace(parent=folder / "scratch"))
        # Warm the model on a small image, so that the baseline holds what every request needs.
        small = folder / "small.png"
        import cv2

        cv2.imwrite(str(small), np.zeros((64, 64, 3), np.uint8))
        handlers.segment(service, str(small), "a lesion", samples=samples)
        import gc

        gc.collect()
        baseline = rss_mb()
        start_peak = peak_mb()
        reset_peak()

        outcomes: dict = {}
        barrier = threading.Barrier(workers)

        def upload(index: int) -> None:
            path = files[index % len(files)]
            barrier.wait()
            preview = handlers.upload(service, str(path))
            screen = handlers.segment(service, str(path), "a round lesion", samples=samples)
            outcomes[index] = (path.name, str(preview.status or ""), str(screen.status or ""))

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(workers)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - began
        peak = peak_mb()
        service.close()
        store.close()
    return {"max_pixels": max_pixels, "workers": workers, "cache_mb": cache_mb, "baseline_mb": round(baseline, 1),
            "peak_before_uploads_mb": round(start_peak, 1), "peak_mb": round(peak, 1),
            "bound_mb": round(bound_mb(baseline, max_pixels, workers, cache_mb), 1), "seconds": round(seconds, 1),
            "files": {str(k): list(v) for k, v in sorted(outcomes.items())}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-pixels", type=int, default=4_000_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--cache-mb", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.max_pixels, args.workers, args.cache_mb, args.samples)
    result["ok"] = result["peak_mb"] <= result["bound_mb"]
    if args.json:
        print(json.dumps(result))
    else:
        for key, (name, preview, status) in result["files"].items():
            print(f"worker {key}: {name}: {preview[:90]!r} / {status[:90]!r}")
        print(" ".join(f"{k}={result[k]}" for k in ("max_pixels", "workers", "baseline_mb", "peak_mb", "bound_mb",
                                                    "seconds", "ok")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
