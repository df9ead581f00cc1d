"""Does uncertainty-ranked annotation beat random order? A simulated annotation loop, repeated over seeds.

    python benchmarks/acquisition_study.py --out docs/study                  # both real sets, 3 seeds
    python benchmarks/acquisition_study.py --data realdata --seeds 0 --rounds 2 ...   # smaller

For each data set, each seed and each queue order, starting from the shipped demo model:

1. a pool of `max_pool` cases is drawn from the training split and `max_test` held-out cases from
   the test split (both by the seed), and the pool is ingested into a new annotation database
   (every image predicted; the database's random keys come from the seed as well);
2. each round, the queue serves `round_size` cases in the order under study, and a simulated
   annotator saves the true mask as its correction (the pixels it changes are the effort);
3. the product's own retraining (``medclipseg.annotation.retraining.run_retrain``, the code of
   `medclipseg retrain` and the Model tab; its seed is the study's seed) fine-tunes the current
   version on every case labelled so far and promotes the result; the remaining queue is re-scored
   by it (``AnnotationService.rescore_pending``, as the app does in the background);
4. the new version is scored on the held-out cases: DSC per structure.

Every order of one seed sees the same pool, the same initial predictions (one ingest, copied) and
the same recipe; only the order of the queue differs. The baselines are random order and
foreground-aware random (prompts that name a present structure first, as an annotator skipping
"No ..." slices would). Each order's first round is also described by how spread out it was:
distinct slices, distinct prompts and the mean distance in slices between its cases.

The data sets: ``realdata`` (the Colin27 T1 with AAL structures, Debian's mricron-data) and
``icbm`` (the ICBM152 2009a template with its grey/white matter maps, from the nilearn package).

Writes <out>/study.json, <out>/study.png (mean held-out DSC against labels, a band of one standard
deviation over seeds, one line per order) and <out>/study.md (the tables); the last line printed
is a summary.
"""
from __future__ import annotations

import argparse
import json
import math
import random
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

STRATEGIES = ("random", "random_foreground", "band_entropy", "band_entropy_diverse", "random_diverse")
SIMULATED_ANNOTATOR = "simulated-annotator"
REACH = 0.95  # "labels needed to reach 95 % of the all-pool DSC"


@dataclass
class StudyConfig:
    datasets: Sequence[str] = ("realdata", "icbm")
    strategies: Sequence[str] = STRATEGIES
    seeds: Sequence[int] = (0, 1, 2)
    round_size: int = 8
    rounds: int = 4
    epochs: int = 4           # per round, from the previous round's model (the product's behaviour)
    reference_epochs: int = 8  # the all-pool model, from the demo model
    num_samples: int = 4
    max_pool: Optional[int] = 64
    max_test: Optional[int] = 40
    phantoms_per_modality: int = 40
    device: str = "cpu"
    realdata_templates: Optional[str] = None


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
    served: list = field(default_factory=list)  # image names labelled in this round


# ------------------------------------------------------------------------------------ data


def prepare_data(name: str, root: Path, config: StudyConfig) -> tuple:
    """(pool, test): every example of the data set's training and test splits, written under `root`."""
    folder = root / name
    if name == "realdata":
        from medclipseg.datasets.realdata import DEFAULT_TEMPLATES_DIR, read_manifest, write_realdata

        write_realdata(folder, templates=config.realdata_templates or DEFAULT_TEMPLATES_DIR)
        groups = {record["image"]: record["structure"] for record in read_manifest(folder)["images"]}
    elif name == "icbm":
        from medclipseg.datasets.icbm import write_icbm_slices

        groups = {record["image"]: record["structure"] for record in write_icbm_slices(folder)["images"]}
    elif name == "phantoms":
        from medclipseg.phantoms.writer import read_manifest, write_dataset

        # Shifted phantoms (noise, gain, blur): the demo model was trained on unshifted ones.
        write_dataset(folder, config.phantoms_per_modality, 1, shift=True)
        groups = {record["image"]: record["modality"] for record in read_manifest(folder)["records"]}
    else:
        raise ValueError(f"Unknown data set {name!r}; use realdata, icbm or phantoms.")

    def examples(split: str) -> list:
        found = []
        for sample in load_split(folder, split):
            mask = read_mask(Path(sample.mask_path).read_bytes()) > 0
            # Slices without the structure ("No ... in the image") are scored as a group of their own:
            # their DSC is 1 for an empty prediction and 0 otherwise.
            group = groups.get(sample.image_name, "all") if mask.any() else "absent"
            found.append(Example(image_path=sample.image_path, mask=mask, prompt=sample.prompt,
                                 name=sample.image_name, group=group))
        return found

    return examples("train"), examples("test")


def draw(examples: Sequence[Example], limit: Optional[int], seed: int) -> list:
    """`limit` examples drawn by `seed`, in the drawn order (all of them, shuffled, without a limit)."""
    order = np.random.default_rng(seed).permutation(len(examples))
    return [examples[i] for i in order[:limit]]


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

    key = ACQUISITIONS[strategy].score_key or ACQUISITIONS[DEFAULT_ACQUISITION].score_key or "band_entropy"
    scored = score_examples(model_source, training_examples(test), num_samples=config.num_samples,
                            device=config.device, uncertainty_key=key)
    groups: dict = {}
    for example, case in zip(test, scored.per_case):
        groups.setdefault(example.group, []).append(case["dsc"])
    by_group = {group: float(np.mean(values)) for group, values in sorted(groups.items())}
    return scored.dsc, by_group, scored.uncertainty_spearman


def spread(names: Sequence[str], prompts: dict) -> dict:
    """How spread out a set of labelled slices is: distinct slices and prompts, mean slice distance."""
    from medclipseg.annotation.diversity import source_and_slice

    slices = [source_and_slice(name)[1] for name in names]
    slices = [z for z in slices if z is not None]
    distances = [abs(a - b) for i, a in enumerate(slices) for b in slices[i + 1:]]
    return {"cases": len(names), "distinct_slices": len(set(slices)),
            "distinct_prompts": len({prompts[name] for name in names}),
            "mean_slice_distance": float(np.mean(distances)) if distances else 0.0}


# ------------------------------------------------------------------------------------ the loop


def ingest_pool(db_path: Path, pool: Sequence[Example], config: StudyConfig, seed: int) -> dict:
    """One database holding every pool image as a case with the demo model's prediction."""
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore

    random.seed(seed)  # the cases' random keys (random order) come from Python's generator
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
                 config: StudyConfig, seed: int, zero_shot: RoundResult, log) -> list:
    from medclipseg.annotation.retraining import run_retrain
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore
    from medclipseg.training.config import RetrainRecipe

    db_path = work / strategy / "annotations.db"
    copy_database(template_db, db_path)
    store = AnnotationStore(db_path)
    service = AnnotationService(store, device=config.device, num_samples=config.num_samples)
    recipe = replace(RetrainRecipe(), epochs=config.epochs, eval_samples=config.num_samples, seed=seed)
    rounds = [zero_shot]
    labels = pixels = 0
    try:
        for round_index in range(config.rounds):
            started = time.perf_counter()
            served = []
            for _ in range(config.round_size):
                case = store.next_case(SIMULATED_ANNOTATOR, acquisition=strategy)
                if case is None:
                    break
                correction = store.save_correction(case.id, case_truth[case.id].mask, annotator=SIMULATED_ANNOTATOR)
                served.append(case_truth[case.id].name)
                labels += 1
                pixels += correction.pixels_changed
            outcome = run_retrain(store, by=SIMULATED_ANNOTATOR, recipe=recipe, promote="yes", device=config.device,
                                  log=lambda line: None)
            service.rescore_pending()
            dsc, by_group, spearman = evaluate(store.model_source(outcome.version_id), test, config, strategy)
            seconds = time.perf_counter() - started
            rounds.append(RoundResult(labels, pixels, dsc, by_group, spearman, seconds, served))
            log(f"  seed {seed} {strategy:22} round {round_index + 1}: {labels:4d} labels {pixels:8d} px  "
                f"DSC {dsc:.3f}  ({seconds:.0f} s)")
    finally:
        service.close()
        store.close()
    return rounds


def reference_all_pool(pool: Sequence[Example], test: Sequence[Example], work: Path, config: StudyConfig,
                       seed: int) -> tuple:
    """The model fine-tuned on the whole pool at once (the ceiling the orders are compared with)."""
    from medclipseg.training.config import RetrainRecipe
    from medclipseg.training.retrain import fine_tune

    recipe = replace(RetrainRecipe(), epochs=config.reference_epochs, seed=seed)
    folder = fine_tune("demo", training_examples(pool), recipe, work / "reference-model", device=config.device)
    return evaluate(str(folder), test, config)


def labels_to_reach(rounds: Sequence[dict], target: float) -> Optional[int]:
    for round_result in rounds:
        if round_result["dsc"] >= target:
            return round_result["labels"]
    return None


def run_seed(name: str, pool_all: list, test_all: list, work: Path, config: StudyConfig, seed: int, log) -> dict:
    started = time.perf_counter()
    pool, test = draw(pool_all, config.max_pool, seed), draw(test_all, config.max_test, seed + 1000)
    template = work / "template" / "annotations.db"
    template.parent.mkdir(parents=True, exist_ok=True)
    case_truth = ingest_pool(template, pool, config, seed)
    dsc, by_group, spearman = evaluate("demo", test, config)
    zero_shot = RoundResult(0, 0, dsc, by_group, spearman, 0.0)
    reference = reference_all_pool(pool, test, work, config, seed)
    log(f"{name} seed {seed}: pool {len(pool)}, held-out {len(test)}; zero-shot DSC {dsc:.3f}, "
        f"all-pool DSC {reference[0]:.3f}")
    prompts = {example.name: example.prompt for example in pool}
    strategies, spreads = {}, {}
    for strategy in config.strategies:
        rounds = run_strategy(strategy, template, work, case_truth, test, config, seed, zero_shot, log)
        strategies[strategy] = [asdict(r) for r in rounds]
        spreads[strategy] = spread(rounds[1].served, prompts) if len(rounds) > 1 else None
    return {"seed": seed, "pool": len(pool), "test": len(test), "zero_shot": asdict(zero_shot),
            "reference": {"dsc": reference[0], "dsc_by_group": reference[1], "spearman": reference[2]},
            "strategies": strategies, "first_round_spread": spreads, "seconds": time.perf_counter() - started}


def run_dataset(name: str, root: Path, config: StudyConfig, log=print) -> dict:
    started = time.perf_counter()
    pool_all, test_all = prepare_data(name, root / "data", config)
    log(f"{name}: training split {len(pool_all)} cases, test split {len(test_all)} cases")
    seeds = [run_seed(name, pool_all, test_all, root / "work" / name / f"seed{seed}", config, seed, log)
             for seed in config.seeds]
    groups = sorted({g for run in seeds for g in run["zero_shot"]["dsc_by_group"]})
    return {"dataset": name, "pool": seeds[0]["pool"], "test": seeds[0]["test"], "groups": groups,
            "seeds": seeds, "seconds": time.perf_counter() - started}


# ------------------------------------------------------------------------------------ report


def curves(data: dict, strategy: str) -> tuple:
    """(labels per round, DSC per seed x round) of one order on one data set."""
    runs = [run["strategies"][strategy] for run in data["seeds"] if strategy in run["strategies"]]
    length = min(len(rounds) for rounds in runs)
    labels = [runs[0][i]["labels"] for i in range(length)]
    return labels, np.array([[rounds[i]["dsc"] for i in range(length)] for rounds in runs])


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.2f}"


def summary_tables(study: dict) -> str:
    lines = []
    for data in study["datasets"]:
        strategies = list(data["seeds"][0]["strategies"])
        seeds = [run["seed"] for run in data["seeds"]]
        zero = [run["zero_shot"]["dsc"] for run in data["seeds"]]
        ceiling = [run["reference"]["dsc"] for run in data["seeds"]]
        lines += [f"### {data['dataset']}: pool {data['pool']}, held-out {data['test']}, seeds {seeds}", "",
                  f"Zero-shot (demo-tiny) DSC {np.mean(zero):.3f} ± {np.std(zero):.3f}; all-pool fine-tune DSC "
                  f"{np.mean(ceiling):.3f} ± {np.std(ceiling):.3f} (mean ± standard deviation over seeds).", ""]
        labels, _ = curves(data, strategies[0])
        lines += ["Held-out DSC after each round, mean ± standard deviation over seeds; the last columns are "
                  "the mean over rounds (area under the learning curve) and the seeds where the order beat "
                  "random at the last round:", "",
                  "| order | " + " | ".join(f"{n} labels" for n in labels[1:]) + " | mean over rounds | "
                  "beats random (last round) |", "|---" * (len(labels) + 2) + "|"]
        _, random_dsc = curves(data, "random") if "random" in strategies else (None, None)
        for strategy in strategies:
            _, dsc = curves(data, strategy)
            cells = [f"{dsc[:, i].mean():.3f} ± {dsc[:, i].std():.3f}" for i in range(1, dsc.shape[1])]
            wins = "-" if random_dsc is None or strategy == "random" else \
                f"{int((dsc[:, -1] > random_dsc[:, -1]).sum())}/{dsc.shape[0]}"
            lines.append(f"| {strategy} | " + " | ".join(cells) + f" | {dsc[:, 1:].mean():.3f} | {wins} |")
        lines += ["", "The first round's labels, mean over seeds: distinct slices, distinct prompts, mean distance "
                  "in slices between two of its cases:", "",
                  "| order | distinct slices | distinct prompts | mean slice distance |", "|---|---|---|---|"]
        for strategy in strategies:
            rows = [run["first_round_spread"][strategy] for run in data["seeds"] if run["first_round_spread"][strategy]]
            lines.append(f"| {strategy} | {np.mean([r['distinct_slices'] for r in rows]):.1f} | "
                         f"{np.mean([r['distinct_prompts'] for r in rows]):.1f} | "
                         f"{np.mean([r['mean_slice_distance'] for r in rows]):.1f} |")
        lines.append("")
    return "\n".join(lines)


def plot(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = study["datasets"]
    figure, axes = plt.subplots(1, len(datasets), figsize=(6.2 * len(datasets), 4.4), squeeze=False)
    for column, data in enumerate(datasets):
        ax = axes[0][column]
        for strategy in data["seeds"][0]["strategies"]:
            labels, dsc = curves(data, strategy)
            mean, std = dsc.mean(axis=0), dsc.std(axis=0)
            style = "--" if strategy.startswith("random") else "-"
            width = 2.6 if strategy == study["default"] else 1.4
            line, = ax.plot(labels, mean, style, marker="o", markersize=3, linewidth=width, label=strategy)
            ax.fill_between(labels, mean - std, mean + std, color=line.get_color(), alpha=0.12)
        ceiling = np.mean([run["reference"]["dsc"] for run in data["seeds"]])
        ax.axhline(ceiling, color="grey", linewidth=1, linestyle=":", label="all pool")
        ax.set_xlabel("cases labelled")
        ax.set_ylabel("held-out DSC (mean ± sd over seeds)")
        ax.set_title(f"{data['dataset']} (pool {data['pool']}, held-out {data['test']}, "
                     f"{len(data['seeds'])} seeds)")
        ax.grid(alpha=0.3)
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


def write_report(study: dict, out: Path) -> None:
    (out / "study.json").write_text(json.dumps(study, indent=1), encoding="utf-8")
    plot(study, out / "study.png")
    (out / "study.md").write_text(summary_tables(study), encoding="utf-8")


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
    study = {"config": asdict(config), "default": DEFAULT_ACQUISITION, "datasets": []}
    try:
        for name in config.datasets:
            study["datasets"].append(run_dataset(name, work, config, log))
            study["seconds"] = time.perf_counter() - started
            write_report(study, out)  # a long run leaves its results so far
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)
    return study


def main(argv=None) -> None:
    defaults = StudyConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/study", help="folder for study.json, study.png, study.md")
    parser.add_argument("--data", default=",".join(defaults.datasets), help="realdata, icbm, phantoms (comma-separated)")
    parser.add_argument("--strategies", default=",".join(defaults.strategies), help="comma-separated orders")
    parser.add_argument("--seeds", default=",".join(map(str, defaults.seeds)), help="comma-separated seeds")
    parser.add_argument("--round-size", type=int, default=defaults.round_size, help="cases labelled per round")
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="rounds per order")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="retraining epochs per round")
    parser.add_argument("--reference-epochs", type=int, default=defaults.reference_epochs,
                        help="epochs of the all-pool reference")
    parser.add_argument("--samples", type=int, default=defaults.num_samples, help="Monte-Carlo samples")
    parser.add_argument("--max-pool", type=int, default=defaults.max_pool, help="pool cases drawn per seed")
    parser.add_argument("--max-test", type=int, default=defaults.max_test, help="held-out cases drawn per seed")
    parser.add_argument("--device", default="cpu", help="torch device")
    args = parser.parse_args(argv)
    config = StudyConfig(datasets=tuple(args.data.split(",")), strategies=tuple(args.strategies.split(",")),
                         seeds=tuple(int(s) for s in args.seeds.split(",")), round_size=args.round_size,
                         rounds=args.rounds, epochs=args.epochs, reference_epochs=args.reference_epochs,
                         num_samples=args.samples, max_pool=args.max_pool, max_test=args.max_test,
                         device=args.device)
    study = run_study(config, Path(args.out), log=lambda line: print(line, flush=True))
    print(summary_tables(study))
    parts = []
    for data in study["datasets"]:
        means = {strategy: float(curves(data, strategy)[1][:, 1:].mean()) for strategy in data["seeds"][0]["strategies"]}
        best = max(means, key=means.get)
        parts.append(f"{data['dataset']}_best={best}({means[best]:.3f})"
                     + (f"_random={means['random']:.3f}" if "random" in means else ""))
    print(" ".join(parts) + f" minutes={study['seconds'] / 60:.1f}")


if __name__ == "__main__":
    main()
