"""What an annotator waits for on a large volume case: opening it, and the server's answer to a slice request.

    python benchmarks/volume_case_latency.py [--size 512x512x300] [--repeats 15]

A stored case is made from the real Colin27 T1 (Debian's mricron-data) resampled to ``--size``
voxels, with a prediction of the demo model at 2 Monte-Carlo samples (the maps' content does not
change what serving costs). Then, through the app's own handlers on a real SQLite store:

- ``open``: ``handlers.open_case`` of the volume case, from a fresh handler memory (the first open,
  the predicted mask read and decoded), and again (warm);
- ``slices``: ``handlers.volume_slices`` for one slice far from the ones asked before, carrying
  the edit of the slice left behind (what the editor sends when the annotator jumps), and for the
  slice next to it;
- baseline, in the same run: ``handlers.open_case`` of a 2-D case of one slice's size
  (512 x 512 by default), the same work for an image.

Each figure is the median over ``--repeats``. The last line reads
``open_ms=<first open> open_warm_ms=<x> slice_ms=<y> image_open_ms=<baseline> ratio=<open_warm / image_open>``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from volume_latency import PROMPT, T1, parse_size, resampled_t1  # noqa: E402

from medclipseg.annotation.scratch import ScratchSpace  # noqa: E402
from medclipseg.annotation.service import AnnotationService  # noqa: E402
from medclipseg.annotation.store import AnnotationStore  # noqa: E402
from medclipseg.app import handlers  # noqa: E402
from medclipseg.inference.predictor import Predictor  # noqa: E402
from medclipseg.inference.volume import predict_volume  # noqa: E402
from medclipseg.io.masks import mask_from_runs, mask_to_runs  # noqa: E402

ANNOTATOR = "bench"


def median_ms(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def edit_of(value: dict, index: int, mask: np.ndarray, revision: int) -> dict:
    """The editor's value on slice ``index`` with ``mask`` (as mask_editor.js sends it)."""
    return {"kind": "edit", "session": value["session"], "case_id": value["case_id"],
            "prediction_id": value["prediction_id"], "base_version": value["base_version"],
            "threshold": value["threshold"], "uncertainty_threshold": value["uncertainty_threshold"],
            "width": value["width"], "height": value["height"], "revision": revision, "saved_revision": 0,
            "dirty": True, "edited": True, "runs": mask_to_runs(mask), "volume": True, "slice_index": int(index),
            "reviewed": [int(index)], "pending": [], "window": list(value["volume"]["window"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=(512, 512, 300), help="voxels i x j x k")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if not T1.is_file():
        sys.exit(f"{T1} is missing: install Debian's mricron-data for the real T1.")

    volume = resampled_t1(args.size)
    predictor = Predictor.from_pretrained("demo")
    with tempfile.TemporaryDirectory(prefix="medclipseg-bench-") as folder:
        store = AnnotationStore(Path(folder) / "annotations.db")
        service = AnnotationService(store, predictor, num_samples=2, volume_samples=2,
                                    scratch=ScratchSpace(parent=Path(folder)))
        began = time.perf_counter()
        prediction = predict_volume(predictor, volume, PROMPT, num_samples=2, seed=0)
        case, prediction_id = store.add_volume_case_with_prediction(volume, prediction, prompt=PROMPT,
                                                                    original_name="t1.nii.gz")
        geometry = store.volume_geometry(case.id)
        print(f"case of {geometry.depth} slices of {geometry.rows} x {geometry.columns} stored in "
              f"{time.perf_counter() - began:.1f} s", flush=True)

        def open_volume():
            return handlers.open_case(service, case.id, prediction_id, ANNOTATOR)

        handlers.VOLUMES = handlers._VolumeMemory()  # nothing held from before: the first open pays the reads
        began = time.perf_counter()
        screen = open_volume()
        first_open_ms = 1000 * (time.perf_counter() - began)
        assert screen.session is not None, screen.status
        open_warm_ms = median_ms(open_volume, args.repeats)

        value = screen.editor
        start = value["volume"]["index"]
        start_mask = mask_from_runs(value["start_runs"], (value["height"], value["width"]))
        targets = [(start + geometry.depth // 2 + 7 * n) % geometry.depth for n in range(args.repeats)]
        slice_times, near_times = [], []
        for revision, target in enumerate(targets, start=1):
            painted = start_mask.copy()
            painted[revision % value["height"], :] = True  # one edited row: a real edit travels along
            request = dict(edit_of(value, start, painted, revision), kind="slice_request", wanted=[target])
            began = time.perf_counter()
            answer = handlers.volume_slices(service, request, ANNOTATOR)
            slice_times.append(time.perf_counter() - began)
            assert answer["kind"] == "slices", answer
            near = dict(request, wanted=[(target + 1) % geometry.depth])
            began = time.perf_counter()
            handlers.volume_slices(service, near, ANNOTATOR)
            near_times.append(time.perf_counter() - began)
        slice_ms = 1000 * statistics.median(slice_times)
        near_ms = 1000 * statistics.median(near_times)

        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (geometry.rows, geometry.columns, 3), dtype=np.uint8)
        image_prediction = predictor.predict(image, PROMPT, num_samples=2, seed=0)
        image_case, image_prediction_id = store.add_case_with_prediction(image, image_prediction, prompt=PROMPT,
                                                                         original_name="slice.png")
        image_open_ms = median_ms(lambda: handlers.open_case(service, image_case.id, image_prediction_id, ANNOTATOR),
                                  args.repeats)
        service.close()
        store.close()

    print(f"open (first, cold memory): {first_open_ms:.0f} ms; open again: {open_warm_ms:.0f} ms; "
          f"slice request with an edit, far slice: {slice_ms:.0f} ms, next slice: {near_ms:.0f} ms; "
          f"baseline, a {geometry.rows} x {geometry.columns} image case opened: {image_open_ms:.0f} ms")
    print(f"open_ms={first_open_ms:.0f} open_warm_ms={open_warm_ms:.0f} slice_ms={slice_ms:.0f} "
          f"image_open_ms={image_open_ms:.0f} ratio={open_warm_ms / image_open_ms:.2f}")


if __name__ == "__main__":
    main()
