"""Latency of a 30-sample map with the demo model: samples folded 8 per pass (baseline) vs 32.

    python benchmarks/chunk_latency.py

Prints the median seconds of whole `predict` calls for each chunk size and the speedup.
"""
import statistics
import time

from medclipseg.phantoms import generate_phantom
from medclipseg.inference.predictor import Predictor


def median_seconds(predictor, image, prompt, repeats=9):
    predictor.predict(image, prompt, num_samples=30, seed=0, channel_order="bgr")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.predict(image, prompt, num_samples=30, seed=0, channel_order="bgr")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    phantom = generate_phantom("breast_ultrasound", 90210, num_targets=1)
    prompt = phantom.rows()[0]["prompts"]["original"]
    baseline = median_seconds(Predictor.from_pretrained("demo", device="cpu", chunk_size=8), phantom.image, prompt)
    folded = median_seconds(Predictor.from_pretrained("demo", device="cpu", chunk_size=32), phantom.image, prompt)
    print(f"chunk 8: {baseline:.3f} s  chunk 32: {folded:.3f} s  speedup={baseline / folded:.2f}")


if __name__ == "__main__":
    main()
