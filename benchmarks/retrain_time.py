"""What a retraining round costs: fine_tune of the demo model on 50, 100 and 150 corrected slices.

Slices are shifted phantoms (all five modalities, one prompt row each), the kind of acquisition
change a team corrects the model for. Every round uses the default recipe
(configs/retrain/coffee-break.toml = RetrainRecipe()). The baseline, measured in the same run on
the same slices, is one pass of the app's Monte-Carlo prediction over them (30 samples per
slice): what ingesting the round's images costs. Prints a table, then

    retrain_s_50=.. retrain_s_100=.. retrain_s_150=.. device=cpu

    python benchmarks/retrain_time.py [--rounds 50,100,150] [--device cpu] [--recipe FILE] [--held-out 40]

With --held-out N it also scores the demo model and each round's model on N other shifted
phantoms (8 samples, the recipe's scoring settings), so the time is shown next to what it buys.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medclipseg.inference.predictor import Predictor  # noqa: E402
from medclipseg.phantoms.generate import generate_phantom  # noqa: E402
from medclipseg.phantoms.vocabulary import MODALITIES  # noqa: E402
from medclipseg.registry import load_model  # noqa: E402
from medclipseg.training.config import RetrainRecipe, load_recipe  # noqa: E402
from medclipseg.training.retrain import TrainingExample, fine_tune, score_examples  # noqa: E402


def phantom_examples(count: int, first_seed: int) -> list:
    examples = []
    for index in range(count):
        modality = MODALITIES[index % len(MODALITIES)]
        phantom = generate_phantom(modality, first_seed + index, shifted=True)
        row = phantom.rows()[0]
        examples.append(TrainingExample(phantom.image, row["mask"], row["prompts"]["original"],
                                        f"{modality}_{first_seed + index}"))
    return examples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", default="50,100,150")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--recipe", default=None, help="a recipe TOML file (default: RetrainRecipe())")
    parser.add_argument("--held-out", type=int, default=0)
    args = parser.parse_args(argv)
    rounds = [int(n) for n in args.rounds.split(",")]
    recipe = load_recipe(args.recipe) if args.recipe else RetrainRecipe()
    device = args.device
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"device {device}; recipe {recipe}")

    pool = phantom_examples(max(rounds), first_seed=1000)
    held_out = phantom_examples(args.held_out, first_seed=90000) if args.held_out else []
    predictor = Predictor.from_loaded(load_model("demo", device=device), device=device)
    predictor.predict(pool[0].image_bgr, pool[0].prompt, num_samples=30, seed=0, channel_order="bgr")  # warm-up
    zero_shot = None
    if held_out:
        zero_shot = score_examples(predictor, held_out, num_samples=recipe.eval_samples, threshold=recipe.threshold,
                                   nsd_tolerance=recipe.nsd_tolerance)

    rows, seconds = [], {}
    for count in rounds:
        examples = pool[:count]
        started = time.perf_counter()
        for example in examples:
            predictor.predict(example.image_bgr, example.prompt, num_samples=30, seed=0, channel_order="bgr")
        baseline = time.perf_counter() - started
        steps = []
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            out = fine_tune("demo", examples, recipe, Path(folder) / "model", device=device, on_progress=steps.append)
            retrain = time.perf_counter() - started
            gold = None
            if held_out:
                gold = score_examples(str(out), held_out, num_samples=recipe.eval_samples,
                                      threshold=recipe.threshold, nsd_tolerance=recipe.nsd_tolerance, device=device)
        seconds[count] = retrain
        print(f"round of {count}: retrain {retrain:.1f} s, MC predict pass {baseline:.1f} s", flush=True)
        rows.append((count, retrain, retrain / count, steps[-1].step, baseline, retrain / baseline, gold))

    print()
    print("| slices | retrain s | s/slice | steps | MC predict pass s (baseline) | ratio | held-out DSC |")
    print("|---|---|---|---|---|---|---|")
    if zero_shot is not None:
        print(f"| 0 (demo-tiny) | - | - | - | - | - | {zero_shot.dsc:.3f} |")
    for count, retrain, per_slice, steps, baseline, ratio, gold in rows:
        dsc = f"{gold.dsc:.3f}" if gold is not None else "-"
        print(f"| {count} | {retrain:.1f} | {per_slice:.3f} | {steps} | {baseline:.1f} | {ratio:.2f} | {dsc} |")
    print(" ".join(f"retrain_s_{count}={seconds[count]:.1f}" for count in rounds) + f" device={device}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
