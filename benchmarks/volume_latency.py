"""A whole volume predicted by the demo model: slices batched per forward pass against one `predict` per slice.

    python benchmarks/volume_latency.py [--size 256x256x108] [--samples 8] [--batch-slices 8] [--device cpu]

The volume is the real Colin27 T1 (Debian's mricron-data, ``ch2bet.nii.gz``, 181 x 217 x 181 at
1 mm) resampled (trilinear) to ``--size`` voxels (i x j x k), its affine scaled to match, so it is
sliced axially along k like a thick-slice acquisition. ``predict_volume`` runs first, then its
maps are compacted to 8 bit as a case stores them; then the baseline, in the same run: the same
display slices, windowed the same way, predicted one by one with ``predictor.predict`` with the
same per-slice seeds (so the maps must agree too; the largest difference is printed).

peak_rss_mb is the process's peak resident memory (``ru_maxrss``) once the volume is predicted:
the libraries and the model, the scan, the float16 maps, the mask and the passes' activations. It is
read before the 8-bit copy is made, which a case store does not hold whole (it quantises and writes
one slice at a time); torch alone is about 0.7 GB of it, open_clip and its imports 0.3 GB more.
slice_open_ms is the median time to build one display slice's payload from what a stored case
holds: the scan slice windowed to uint8, and its probability and entropy from the 8-bit maps.
The last line reads ``volume_s=<x> slices=<n> peak_rss_mb=<m> slice_open_ms=<y>``.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medclipseg.inference.predictor import Predictor  # noqa: E402
from medclipseg.inference.volume import IMAGES_PER_PASS, compact_maps, expand_maps, predict_volume, slice_seed  # noqa: E402
from medclipseg.io.volumes import ScanVolume, read_nifti, window_to_uint8  # noqa: E402

T1 = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
PROMPT = "Brain in the brain MRI image."
SLICE_OPEN_REPEATS = 51


def parse_size(text: str) -> tuple:
    try:
        size = tuple(int(n) for n in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 2:
        raise argparse.ArgumentTypeError(f"a size is three voxel counts like 256x256x108; got {text!r}")
    return size


def resampled_t1(size: tuple) -> ScanVolume:
    """The real T1 resampled to ``size`` voxels; corner voxels stay where they were (grid_mode off)."""
    from scipy import ndimage

    source = read_nifti(T1)
    factors = [new / old for new, old in zip(size, source.shape)]
    array = ndimage.zoom(source.array, factors, order=1, output=np.float32)
    step = np.diag([(old - 1) / (new - 1) for old, new in zip(source.shape, size)] + [1.0])
    return ScanVolume(array=array, affine=source.affine @ step, modality="MR", name="ch2bet-resampled")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=(256, 256, 108), help="voxels i x j x k")
    parser.add_argument("--samples", type=int, default=8, help="Monte-Carlo samples per slice")
    parser.add_argument("--batch-slices", type=int, default=None,
                        help="slices per forward pass (default: predict_volume's, a pass of chunk_size images)")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--baseline-slices", type=int, default=None,
                        help="predict only this many slices one by one and scale the time up (default: all)")
    args = parser.parse_args()
    if not T1.is_file():
        sys.exit(f"{T1} is missing: install Debian's mricron-data for the real T1.")

    volume = resampled_t1(args.size)
    predictor = Predictor.from_pretrained("demo", device=args.device)
    plane = volume.slice_plane
    scan = volume.to_display(plane=plane)
    depth, rows, columns = scan.shape
    print(f"volume {' x '.join(map(str, volume.shape))} voxels, spacing "
          f"{' x '.join(f'{s:.3f}' for s in volume.spacing)} mm -> {depth} {plane} slices of {rows} x {columns}; "
          f"model {predictor.model_id} on {predictor.device}, {args.samples} samples", flush=True)
    # Untimed warm-up: lazy initialisation (thread pools, allocator) is not the volume's cost.
    predictor.predict(np.zeros((rows, columns, 3), np.uint8), PROMPT, num_samples=args.samples, seed=0)

    started = time.perf_counter()
    prediction = predict_volume(predictor, volume, PROMPT, num_samples=args.samples, seed=0,
                                batch_slices=args.batch_slices)
    volume_seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    compact = compact_maps(prediction)
    per_pass = args.batch_slices or max(1, min(IMAGES_PER_PASS, predictor.chunk_size)
                                        // max(1, min(predictor.chunk_size, args.samples)))
    print(f"predict_volume: {volume_seconds:.2f} s ({1000 * volume_seconds / depth:.1f} ms per slice, "
          f"{per_pass} slices per pass); start slice {prediction.start_slice}; "
          f"band entropy {prediction.scores['band_entropy']:.4f}; peak RSS {peak:.0f} MB", flush=True)

    rng = np.random.default_rng(0)
    open_times = []
    for index in rng.integers(0, depth, SLICE_OPEN_REPEATS):
        began = time.perf_counter()
        grey = window_to_uint8(scan[index], prediction.window)
        maps = expand_maps(compact, index=index, names=("probability", "entropy"))
        open_times.append(time.perf_counter() - began)
        assert grey.shape == maps["probability"].shape == maps["entropy"].shape
    slice_open_ms = 1000 * statistics.median(open_times)

    baseline_count = depth if args.baseline_slices is None else max(1, min(depth, args.baseline_slices))
    indices = np.linspace(0, depth - 1, baseline_count).round().astype(int)
    display_probability = prediction.display("probability")
    largest_difference = 0.0
    began = time.perf_counter()
    for index in indices:
        grey = window_to_uint8(scan[index], prediction.window)
        single = predictor.predict(np.repeat(grey[..., None], 3, axis=2), PROMPT, num_samples=args.samples,
                                   seed=slice_seed(0, int(index)))
        largest_difference = max(largest_difference, float(np.abs(
            single.probability - display_probability[index].astype(np.float32)).max()))
    baseline_seconds = (time.perf_counter() - began) * depth / baseline_count
    scaled = "" if baseline_count == depth else f" (scaled up from {baseline_count} slices)"
    print(f"baseline, predict per slice: {baseline_seconds:.2f} s{scaled} ({1000 * baseline_seconds / depth:.1f} ms "
          f"per slice); speedup={baseline_seconds / volume_seconds:.2f}; max |probability difference| "
          f"{largest_difference:.1e}", flush=True)
    print(f"volume_s={volume_seconds:.2f} slices={depth} peak_rss_mb={peak:.0f} slice_open_ms={slice_open_ms:.3f}")


if __name__ == "__main__":
    main()
