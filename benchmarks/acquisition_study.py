"""Does uncertainty-ranked annotation beat random order? A simulated annotation loop.

    python benchmarks/acquisition_study.py --out docs/study                 # real MRI slices + phantoms
    python benchmarks/acquisition_study.py --data realdata --rounds 3 ...   # smaller

For each data set and each acquisition strategy, starting from the shipped demo model:

1. the training split is ingested into a new annotation database (every image predicted);
2. each round, the queue serves `round_size` cases in the strategy's order, and a simulated
   annotator saves the true mask as its correction (the pixels it changes are the effort);
3. the product's own retraining (``medclipseg.annotation.retraining.run_retrain``, the code of
   `medclipseg retrain` and the Model tab) fine-tunes the current version on every case
   labelled so far and promotes the result; the remaining queue is re-scored by it
   (``AnnotationService.rescore_pending``, as the app does in the background);
4. the new version is scored on the held-out test split: DSC per structure, and the Spearman
   correlation of the strategy's own image score (the default order's for the random ones)
   with 1 - DSC.

A reference model fine-tuned on the whole pool at once gives the "all labels" DSC, and the table
reports how many labels each strategy needed to reach 95 % of it. Every strategy sees the same
pool, the same initial predictions (one ingest, copied) and the same recipe; only the order of the
queue differs. The baselines are random order and foreground-aware random (prompts that name a
present structure first, as an annotator skipping "No ..." slices would), after nnActive.

Writes <out>/study.json, <out>/study.png (DSC against labels and against pixels corrected, one
line per strategy) and <out>/study.md (the tables); the last line printed is a summary.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from medclipseg.annotation.queue import ACQUISITIONS, DEFAULT_ACQUISITION
from medclipseg.datasets.layout import load_split
from medclipseg.io.masks import read_mask

STRATEGIES = ("random", "random_foreground", "foreground_entropy", "band_entropy", "top_entropy",
              "expected_dice_miss", "band_mutual_information")
SIMULATED_ANNOTATOR = "simulated-annotator"
REACH = 0.95  # "labels needed to reach 95 % of the all-pool DSC"


@dataclass
class StudyConfig:
    datasets: Sequence[str] = ("realdata", "phantoms")
    strategies: Sequence[str] = STRATEGIES
    round_size: int = 20
    rounds: int = 5
    epochs: int = 4           # per round, from the previous round's model (the product's behaviour)
    reference_epochs: int = 12  # the all-pool model, from the demo model (the default recipe)
    num_samples: int = 8
    phantoms_per_modality: int = 40
    seed: int = 0
    device: str = "cpu"
    realdata_templates: Optional[str] = None
    max_test_cases: Optional[int] = None
    max_pool_cases: Optional[int] = None


@dataclass
class Example:
    image_path: Path
    mask: np.ndarray
    prompt: str
    name: str
    group: str  # the structure (real slices) or modality (phantoms) results are grouped by


@dataclass
class RoundResult:
    labels: int
    pixels_corrected: int
    dsc: float
    dsc_by_group: dict
    spearman: Optional[float]
    seconds: float


@dataclass
class StrategyResult:
    strategy: str
    rounds: list = field(default_factory=list)


# ------------------------------------------------------------------------------------ data


def prepare_data(name: str, root: Path, config: StudyConfig) -> tuple:
    """(pool, test) examples of the data set `name`, written under `root`."""
    folder = root / name
    if name == "realdata":
        from medclipseg.datasets.realdata import DEFAULT_TEMPLATES_DIR, read_manifest, write_realdata

        write_realdata(folder, templates=config.realdata_templates or DEFAULT_TEMPLATES_DIR)
        groups = {record["image"]: record["structure"] for record in read_manifest(folder)["images"]}
    elif name == "phantoms":
        from medclipseg.phantoms.writer import read_manifest, write_dataset

        # Shifted phantoms (noise, gain, blur): the demo model was trained on unshifted ones.
        write_dataset(folder, config.phantoms_per_modality, config.seed + 1, shift=True)
        groups = {record["image"]: record["modality"] for record in read_manifest(folder)["records"]}
    else:
        raise ValueError(f"Unknown data set {name!r}; use realdata or phantoms.")

    def examples(split: str, limit: Optional[int]) -> list:
        samples = load_split(folder, split)
        if limit is not None:
            samples = samples[::max(1, math.ceil(len(samples) / limit))][:limit]
        found = []
        for sample in samples:
            mask = read_mask(Path(sample.mask_path).read_bytes()) > 0
            # Slices without the structure ("No ... in the image") are scored as a group of their own:
            # their DSC is 1 for an empty prediction and 0 otherwise.
            group = groups.get(sample.image_name, "all") if mask.any() else "absent"
            found.append(Example(image_path=sample.image_path, mask=mask, prompt=sample.prompt,
                                 name=sample.image_name, group=group))
        return found

    return examples("train", config.max_pool_cases), examples("test", config.max_test_cases)


def training_examples(examples: Sequence[Example]) -> list:
    import cv2

    from medclipseg.training.retrain import TrainingExample

    return [TrainingExample(image_bgr=cv2.imread(str(e.image_path), cv2.IMREAD_COLOR), mask=e.mask,
                            prompt=e.prompt, name=e.name) for e in examples]


# ------------------------------------------------------------------------------------ scoring


def evaluate(model_source, test: Sequence[Example], config: StudyConfig, strategy: str = DEFAULT_ACQUISITION) -> tuple:
    """(mean DSC, DSC per group, Spearman of the strategy's image score vs 1 - DSC); the random
    orders have no score of their own and use the default order's."""
    from medclipseg.training.retrain import score_examples

    key = ACQUISITIONS[strategy].score_key or ACQUISITIONS[DEFAULT_ACQUISITION].score_key
    scored = score_examples(model_source, training_examples(test), num_samples=config.num_samples,
                            device=config.device, uncertainty_key=key)
    groups: dict = {}
    for example, case in zip(test, scored.per_case):
        groups.setdefault(example.group, []).append(case["dsc"])
    by_group = {group: float(np.mean(values)) for group, values in sorted(groups.items())}
    return scored.dsc, by_group, scored.uncertainty_spearman


# ------------------------------------------------------------------------------------ the loop


def ingest_pool(db_path: Path, pool: Sequence[Example], config: StudyConfig) -> dict:
    """One database holding every pool image as a case with the demo model's prediction."""
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore

    store = AnnotationStore(db_path)
    store.set_gold_fraction(0.0)  # the study scores on the held-out test split instead
    service = AnnotationService(store, weights="demo", device=config.device, num_samples=config.num_samples)
    case_truth = {}
    try:
        for example in pool:
            result = service.segment(example.image_path, example.prompt, name=example.name, add_to_queue=True,
                                     origin="ingest")
            case_truth[result.case.id] = example
    finally:
        service.close()
        store.close()
    return case_truth


def copy_database(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    shutil.copytree(source.parent / f"{source.stem}_files", target.parent / f"{target.stem}_files")


def run_strategy(strategy: str, template_db: Path, work: Path, case_truth: dict, test: Sequence[Example],
                 config: StudyConfig, zero_shot: RoundResult, log) -> StrategyResult:
    from medclipseg.annotation.retraining import run_retrain
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore
    from medclipseg.training.config import RetrainRecipe

    db_path = work / strategy / "annotations.db"
    copy_database(template_db, db_path)
    store = AnnotationStore(db_path)
    service = AnnotationService(store, device=config.device, num_samples=config.num_samples)
    recipe = replace(RetrainRecipe(), epochs=config.epochs, eval_samples=config.num_samples, seed=config.seed)
    result = StrategyResult(strategy, [zero_shot])
    labels = pixels = 0
    try:
        for round_index in range(config.rounds):
            started = time.perf_counter()
            for _ in range(config.round_size):
                case = store.next_case(SIMULATED_ANNOTATOR, acquisition=strategy)
                if case is None:
                    break
                correction = store.save_correction(case.id, case_truth[case.id].mask, annotator=SIMULATED_ANNOTATOR)
                labels += 1
                pixels += correction.pixels_changed
            outcome = run_retrain(store, by=SIMULATED_ANNOTATOR, recipe=recipe, promote="yes", device=config.device,
                                  log=lambda line: None)
            service.rescore_pending()
            dsc, by_group, spearman = evaluate(store.model_source(outcome.version_id), test, config, strategy)
            seconds = time.perf_counter() - started
            result.rounds.append(RoundResult(labels, pixels, dsc, by_group, spearman, seconds))
            log(f"  {strategy:24} round {round_index + 1}: {labels:4d} labels {pixels:8d} px  DSC {dsc:.3f}  "
                f"rho {spearman if spearman is not None else float('nan'):.2f}  ({seconds:.0f} s)")
    finally:
        service.close()
        store.close()
    return result


def reference_all_pool(pool: Sequence[Example], test: Sequence[Example], work: Path, config: StudyConfig) -> tuple:
    """The model fine-tuned on the whole pool at once (the ceiling the strategies are compared with)."""
    from medclipseg.training.config import RetrainRecipe
    from medclipseg.training.retrain import fine_tune

    recipe = replace(RetrainRecipe(), epochs=config.reference_epochs, seed=config.seed)
    folder = fine_tune("demo", training_examples(pool), recipe, work / "reference-model", device=config.device)
    return evaluate(str(folder), test, config)


def labels_to_reach(result: StrategyResult, target: float, key=None) -> Optional[int]:
    for round_result in result.rounds:
        value = round_result.dsc if key is None else round_result.dsc_by_group.get(key, float("nan"))
        if value >= target:
            return round_result.labels
    return None


def run_dataset(name: str, root: Path, config: StudyConfig, log=print) -> dict:
    started = time.perf_counter()
    pool, test = prepare_data(name, root / "data", config)
    log(f"{name}: pool {len(pool)} cases, test {len(test)} cases")
    template = root / "work" / name / "template" / "annotations.db"
    template.parent.mkdir(parents=True, exist_ok=True)
    case_truth = ingest_pool(template, pool, config)
    dsc, by_group, spearman = evaluate("demo", test, config)
    zero_shot = RoundResult(0, 0, dsc, by_group, spearman, 0.0)
    log(f"  zero-shot DSC {dsc:.3f} " + " ".join(f"{g} {v:.2f}" for g, v in by_group.items()))
    reference = reference_all_pool(pool, test, root / "work" / name, config)
    log(f"  all-pool reference DSC {reference[0]:.3f} " + " ".join(f"{g} {v:.2f}" for g, v in reference[1].items()))
    results = [run_strategy(strategy, template, root / "work" / name, case_truth, test, config, zero_shot, log)
               for strategy in config.strategies]
    return {"dataset": name, "pool": len(pool), "test": len(test),
            "groups": sorted({e.group for e in test}),
            "zero_shot": asdict(zero_shot),
            "reference": {"dsc": reference[0], "dsc_by_group": reference[1], "spearman": reference[2]},
            "strategies": {r.strategy: [asdict(x) for x in r.rounds] for r in results},
            "seconds": time.perf_counter() - started}


# ------------------------------------------------------------------------------------ report


def _rounds(data: dict, strategy: str) -> StrategyResult:
    return StrategyResult(strategy, [RoundResult(**r) for r in data["strategies"][strategy]])


def summary_tables(study: dict) -> str:
    lines = []
    for data in study["datasets"]:
        reference = data["reference"]
        lines += [f"### {data['dataset']}: pool {data['pool']}, held-out {data['test']}", "",
                  f"Zero-shot (demo-tiny) DSC {data['zero_shot']['dsc']:.3f}; all-pool fine-tune DSC "
                  f"{reference['dsc']:.3f} (Spearman of uncertainty vs 1 - DSC {_fmt(reference['spearman'])}).", ""]
        groups = data["groups"]
        lines += ["| | " + " | ".join(groups) + " | mean |", "|---" * (len(groups) + 2) + "|"]
        lines.append("| zero-shot | " + " | ".join(f"{data['zero_shot']['dsc_by_group'].get(g, float('nan')):.3f}"
                                                     for g in groups) + f" | {data['zero_shot']['dsc']:.3f} |")
        lines.append("| all pool | " + " | ".join(f"{reference['dsc_by_group'].get(g, float('nan')):.3f}"
                                                    for g in groups) + f" | {reference['dsc']:.3f} |")
        lines.append("")
        target = REACH * reference["dsc"]
        budget = data["strategies"][next(iter(data["strategies"]))][-1]["labels"]
        lines += [f"Labels to reach 95 % of the all-pool DSC ({target:.3f}), share of the pool, and the DSC per "
                  f"structure at the last round ({budget} labels):", "",
                  "| strategy | labels to 95 % | share of pool | pixels corrected at the last round | "
                  + " | ".join(groups) + " | mean DSC | Spearman |",
                  "|---" * (len(groups) + 6) + "|"]
        for strategy in data["strategies"]:
            result = _rounds(data, strategy)
            reached = labels_to_reach(result, target)
            last = result.rounds[-1]
            share = "-" if reached is None else f"{reached / data['pool']:.0%}"
            lines.append(f"| {strategy} | {reached if reached is not None else 'not reached'} | "
                         f"{share} | {last.pixels_corrected:,} | "
                         + " | ".join(f"{last.dsc_by_group.get(g, float('nan')):.3f}" for g in groups)
                         + f" | {last.dsc:.3f} | {_fmt(last.spearman)} |")
        lines.append("")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.2f}"


def plot(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = study["datasets"]
    figure, axes = plt.subplots(len(datasets), 2, figsize=(11, 4.2 * len(datasets)), squeeze=False)
    for row, data in enumerate(datasets):
        for column, (x_key, x_label) in enumerate((("labels", "cases labelled"), ("pixels_corrected",
                                                                                   "pixels corrected"))):
            ax = axes[row][column]
            for strategy, rounds in data["strategies"].items():
                style = "--" if strategy.startswith("random") else "-"
                width = 2.6 if strategy == DEFAULT_ACQUISITION else 1.4
                ax.plot([r[x_key] for r in rounds], [r["dsc"] for r in rounds], style, marker="o", markersize=3,
                        linewidth=width, label=strategy)
            ax.axhline(data["reference"]["dsc"], color="grey", linewidth=1, linestyle=":", label="all pool")
            ax.axhline(REACH * data["reference"]["dsc"], color="grey", linewidth=0.8, linestyle="-.",
                       label="95 % of all pool")
            ax.set_xlabel(x_label)
            ax.set_ylabel("held-out DSC")
            ax.set_title(f"{data['dataset']} (pool {data['pool']}, held-out {data['test']})")
            ax.grid(alpha=0.3)
            if column == 0:
                ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _import_everything() -> None:
    """Load every module the loop uses now, so that a long run uses one version of the code throughout."""
    import medclipseg.annotation.retraining  # noqa: F401
    import medclipseg.annotation.service  # noqa: F401
    import medclipseg.inference.predictor  # noqa: F401
    import medclipseg.training.retrain  # noqa: F401
    import medclipseg.training.stage2  # noqa: F401


def run_study(config: StudyConfig, out: Path, *, work: Optional[Path] = None, log=print) -> dict:
    _import_everything()
    unknown = [s for s in config.strategies if s not in ACQUISITIONS]
    if unknown:
        raise ValueError(f"Unknown strategies {unknown}; use some of {', '.join(ACQUISITIONS)}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    owned = work is None
    work = Path(tempfile.mkdtemp(prefix="medclipseg-study-")) if owned else Path(work)
    try:
        study = {"config": asdict(config), "default": DEFAULT_ACQUISITION,
                 "datasets": [run_dataset(name, work, config, log) for name in config.datasets]}
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)
    study["seconds"] = time.perf_counter() - started
    (out / "study.json").write_text(json.dumps(study, indent=1), encoding="utf-8")
    plot(study, out / "study.png")
    (out / "study.md").write_text(summary_tables(study), encoding="utf-8")
    return study


def main(argv=None) -> None:
    defaults = StudyConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/study", help="folder for study.json, study.png, study.md")
    parser.add_argument("--data", default=",".join(defaults.datasets), help="realdata, phantoms or both")
    parser.add_argument("--strategies", default=",".join(defaults.strategies), help="comma-separated orders")
    parser.add_argument("--round-size", type=int, default=defaults.round_size, help="cases labelled per round")
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="rounds per strategy")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="retraining epochs per round")
    parser.add_argument("--reference-epochs", type=int, default=defaults.reference_epochs,
                        help="epochs of the all-pool reference")
    parser.add_argument("--samples", type=int, default=defaults.num_samples, help="Monte-Carlo samples")
    parser.add_argument("--per-modality", type=int, default=defaults.phantoms_per_modality,
                        help="phantoms per modality")
    parser.add_argument("--max-test", type=int, default=None, help="at most this many held-out cases")
    parser.add_argument("--max-pool", type=int, default=None, help="at most this many pool cases")
    parser.add_argument("--device", default="cpu", help="torch device")
    args = parser.parse_args(argv)
    config = StudyConfig(datasets=tuple(args.data.split(",")), strategies=tuple(args.strategies.split(",")),
                         round_size=args.round_size, rounds=args.rounds, epochs=args.epochs,
                         reference_epochs=args.reference_epochs, num_samples=args.samples,
                         phantoms_per_modality=args.per_modality, device=args.device,
                         max_test_cases=args.max_test, max_pool_cases=args.max_pool)
    study = run_study(config, Path(args.out), log=lambda line: print(line, flush=True))
    print(summary_tables(study))
    parts = []
    for data in study["datasets"]:
        target = REACH * data["reference"]["dsc"]
        default = labels_to_reach(_rounds(data, DEFAULT_ACQUISITION), target) if DEFAULT_ACQUISITION in \
            data["strategies"] else None
        parts.append(f"{data['dataset']}_default_labels_to_95={default if default is not None else 'none'}"
                     f"/{data['pool']}")
    print(" ".join(parts) + f" minutes={study['seconds'] / 60:.1f}")


if __name__ == "__main__":
    main()
