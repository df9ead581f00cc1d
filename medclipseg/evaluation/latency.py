"""Latency of whole ``predict`` calls, as the results report and the benchmark scripts time it."""
from __future__ import annotations

import statistics
import time


def median_predict_seconds(predictor, image, prompt: str, num_samples: int = 30, repeats: int = 7,
                           **options) -> float:
    """Median seconds of a whole ``predictor.predict`` call (read, pre-process, samples, maps at full size).

    One untimed call first, so that lazy initialisation and warm-up are not counted. On CUDA the
    device is synchronised around each call, because kernels run asynchronously and the clock
    would otherwise stop before the work is done. ``options`` go to ``predict`` (``adaptive``,
    ``antithetic``, ...); arrays are BGR, as the test sets are read.
    """
    import torch  # only here: importing the package must not import torch

    cuda = getattr(getattr(predictor, "device", None), "type", None) == "cuda"

    def call():
        predictor.predict(image, prompt, num_samples=num_samples, seed=0, channel_order="bgr", **options)

    call()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        call()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return float(statistics.median(times))
