"""Latency of a 30-sample map with the demo model: samples folded 8 per pass (baseline) vs 32.

    python benchmarks/chunk_latency.py

Prints the median seconds of whole `predict` calls for each chunk size and the speedup.
"""
from medclipseg.evaluation.latency import median_predict_seconds
from medclipseg.phantoms import generate_phantom
from medclipseg.inference.predictor import Predictor


def main():
    phantom = generate_phantom("breast_ultrasound", 90210, num_targets=1)
    prompt = phantom.rows()[0]["prompts"]["original"]
    baseline = median_predict_seconds(Predictor.from_pretrained("demo", device="cpu", chunk_size=8), phantom.image,
                                      prompt, repeats=9)
    folded = median_predict_seconds(Predictor.from_pretrained("demo", device="cpu", chunk_size=32), phantom.image,
                                    prompt, repeats=9)
    print(f"chunk 8: {baseline:.3f} s  chunk 32: {folded:.3f} s  speedup={baseline / folded:.2f}")


if __name__ == "__main__":
    main()
