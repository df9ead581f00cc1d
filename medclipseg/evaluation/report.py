"""The benchmark behind docs/results.md: accuracy, robustness, text use, uncertainty and speed.

    medclipseg benchmark --out docs/results.md [--weights demo] [--runs runs/demo]

By default it generates two fresh phantom test sets (in-distribution and shifted) from seeds
never used for training, evaluates the model on them, evaluates every ablation and data-fraction
run found under `--runs`, and writes a Markdown report plus the raw numbers as JSON. `--data`
(and `--shifted-data`) take any folder in the authors' layout instead, so the same report can be
produced on real data sets; per-modality rows, the text-selection check and the shifted column
appear when the data carry that information (a `phantoms.json` manifest, a second folder).

Per image (row of the test table): 30-sample prediction, mask = p > 0.5, resized (nearest) to the
ground truth; DSC, the 2-D contour NSD and the NSD as the MedCLIPSeg authors compute it (both 2 px;
see medclipseg.evaluation.metrics). Uncertainty quality: Spearman between the image's mean entropy
and 1 - DSC; pixel AUROC of the entropy for error pixels; ECE of the probability (15 bins).
"""
from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from medclipseg.datasets.layout import PROMPT_DESIGNS, load_split
from medclipseg.evaluation.evaluate import evaluate_samples
from medclipseg.evaluation.latency import median_predict_seconds
from medclipseg.evaluation.metrics import PixelUncertaintyStats, spearman

# Seeds of the test sets: the training data use other seeds (see docs/training.md).
TEST_SEED = 90210
SHIFTED_SEED = 90211

# Runs evaluated from --runs, in table order: (folder, what it is).
ABLATIONS = (
    ("reference", "full recipe (same schedule as the ablations)"),
    ("means_only", "no probabilistic attention (value means only)"),
    ("no_contrastive", "no soft patch contrastive loss"),
    ("head_only", "no adapters (upscaler and head only)"),
)
DATA_FRACTIONS = (("pct10", 10), ("pct25", 25), ("pct50", 50), ("pct100", 100))


@dataclass
class BenchmarkConfig:
    out: str = "docs/results.md"
    weights: Optional[str] = None  # default: MEDCLIPSEG_WEIGHTS or the demo
    runs: Optional[str] = None
    data: Optional[str] = None  # a test set in the authors' layout instead of fresh phantoms
    shifted_data: Optional[str] = None
    work: str = "benchmark_data"  # where fresh phantom sets are generated (replaced)
    per_modality: int = 30
    seed: int = TEST_SEED
    shifted_seed: int = SHIFTED_SEED
    num_samples: int = 30
    secondary_samples: int = 8  # prompt designs, ablations and data fractions
    prediction_seed: int = 0
    latency_repeats: int = 7
    device: Optional[str] = None
    progress: bool = True


# -- evaluation ---------------------------------------------------------------------------------

def evaluate_split(predictor, root, design: str = "original", num_samples: int = 30, seed: int = 0,
                   pixel_stats: Optional[PixelUncertaintyStats] = None, progress: bool = True,
                   label: str = "") -> list:
    """The rows of :func:`evaluate_samples` for the test split of `root` with one prompt design,
    with the phantom manifest when the folder has one (modalities, the text-selection check)."""
    from medclipseg.phantoms.writer import records_by_row

    samples = load_split(root, "test", design=design)
    return evaluate_samples(predictor, samples, num_samples=num_samples, seed=seed, progress=progress,
                            manifest=records_by_row(root), pixel_stats=pixel_stats,
                            label=label or f"{Path(root).name}/{design}")["per_image"]


def summarise(rows: list) -> dict:
    if not rows:
        return {"rows": 0}
    out = {"rows": len(rows)}
    out.update({key: float(np.mean([r[key] for r in rows])) for key in ("dsc", "nsd", "nsd_authors")})
    selection = [r["selection_correct"] for r in rows if "selection_correct" in r]
    if selection:
        out["selection_accuracy"] = float(np.mean(selection))
        out["selection_rows"] = len(selection)
    return out


def by_modality(rows: list) -> dict:
    groups: dict = {}
    for row in rows:
        groups.setdefault(row["modality"], []).append(row)
    return {name: summarise(group) for name, group in sorted(groups.items())}


def generate_test_sets(config: BenchmarkConfig) -> tuple:
    from medclipseg.phantoms import write_dataset

    work = Path(config.work)
    sets = []
    for name, seed, shift in (("test_id", config.seed, False), ("test_shifted", config.shifted_seed, True)):
        folder = work / name
        if folder.exists():
            shutil.rmtree(folder)
        write_dataset(folder, per_modality=config.per_modality, seed=seed, shift=shift,
                      split_ratios=(0.0, 0.0, 1.0))
        sets.append(folder)
    return tuple(sets)


def run_benchmark(config: BenchmarkConfig) -> dict:
    import torch  # here, not at the top: the CLI imports BenchmarkConfig to build its parser

    from medclipseg.inference.predictor import Predictor

    started = time.perf_counter()
    if config.data:
        id_root, shifted_root = Path(config.data), Path(config.shifted_data) if config.shifted_data else None
    else:
        id_root, shifted_root = generate_test_sets(config)
    predictor = Predictor.from_pretrained(config.weights, device=config.device)
    results: dict = {"config": asdict(config), "model_id": predictor.model_id,
                     "machine": {"cpu": platform.processor() or platform.machine(),
                                 "threads": torch.get_num_threads(), "torch": torch.__version__,
                                 "device": str(predictor.device)}}

    # In distribution, original prompts, full sampling: accuracy and uncertainty quality.
    stats = PixelUncertaintyStats()
    id_rows = evaluate_split(predictor, id_root, "original", config.num_samples, config.prediction_seed, stats,
                             config.progress, "in distribution")
    results["in_distribution"] = {"overall": summarise(id_rows), "by_modality": by_modality(id_rows)}
    results["uncertainty"] = {
        "spearman_entropy_vs_error": spearman([r["mean_entropy"] for r in id_rows], [1 - r["dsc"] for r in id_rows]),
        "pixel_auroc": stats.auroc(), "ece": stats.ece(), "pixel_error_rate": stats.error_rate(),
    }
    if shifted_root is not None:
        shifted_stats = PixelUncertaintyStats()
        shifted_rows = evaluate_split(predictor, shifted_root, "original", config.num_samples,
                                      config.prediction_seed, shifted_stats, config.progress, "shifted")
        results["shifted"] = {"overall": summarise(shifted_rows), "by_modality": by_modality(shifted_rows)}
        results["uncertainty_shifted"] = {
            "spearman_entropy_vs_error": spearman([r["mean_entropy"] for r in shifted_rows],
                                                  [1 - r["dsc"] for r in shifted_rows]),
            "pixel_auroc": shifted_stats.auroc(), "ece": shifted_stats.ece(),
            "pixel_error_rate": shifted_stats.error_rate(),
        }

    # Prompt designs (fewer samples: the masks are what is compared).
    results["designs"] = {}
    for design in PROMPT_DESIGNS:
        rows = evaluate_split(predictor, id_root, design, config.secondary_samples, config.prediction_seed, None,
                              config.progress, design)
        results["designs"][design] = summarise(rows)

    # Latency of one 30-sample map on a typical image (whole predict call, this machine).
    first = load_split(id_root, "test")[0]
    results["latency"] = {
        "image": first.image_name,
        "plain_30": median_predict_seconds(predictor, first.image_path, first.prompt, 30, config.latency_repeats),
        "antithetic_30": median_predict_seconds(predictor, first.image_path, first.prompt, 30,
                                                config.latency_repeats, antithetic=True),
        "adaptive_antithetic": median_predict_seconds(predictor, first.image_path, first.prompt, 30,
                                                      config.latency_repeats, antithetic=True, adaptive=True),
    }

    # Ablations and data fractions, from --runs.
    if config.runs:
        results["ablations"], results["data_fractions"] = {}, {}
        for table, entries in (("ablations", ABLATIONS), ("data_fractions", DATA_FRACTIONS)):
            for name, _ in entries:
                folder = Path(config.runs) / name / "best"
                if not (folder / "config.json").exists():
                    continue
                run_predictor = Predictor.from_pretrained(str(folder), device=config.device)
                rows = evaluate_split(run_predictor, id_root, "original", config.secondary_samples,
                                      config.prediction_seed, None, config.progress, name)
                results[table][name] = summarise(rows)
                if shifted_root is not None:
                    results[table][name]["shifted_dsc"] = summarise(evaluate_split(
                        run_predictor, shifted_root, "original", config.secondary_samples, config.prediction_seed,
                        None, config.progress, name + " shifted"))["dsc"]
    results["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    out.write_text(render_markdown(results))
    return results


# -- report ------------------------------------------------------------------------------------

def _f(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _verdict(value, target, higher_is_better: bool = True) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "missed"


def render_markdown(results: dict) -> str:
    config = results["config"]
    lines = [
        "# Results",
        "",
        "Generated by `medclipseg benchmark` (see the command below); do not edit by hand.",
        "",
        f"- Model: `{results['model_id']}`",
        f"- Test data: {'`' + config['data'] + '`' if config['data'] else 'fresh phantoms, seed %d (in distribution) and %d (shifted), %d images per modality' % (config['seed'], config['shifted_seed'], config['per_modality'])}",
        f"- Sampling: {config['num_samples']} Monte-Carlo samples for the main tables, "
        f"{config['secondary_samples']} for prompt designs, ablations and data fractions; mask = p > 0.5",
        f"- Machine: {results['machine']['cpu']}, {results['machine']['threads']} threads, "
        f"torch {results['machine']['torch']}, {results['machine']['device']}",
        f"- Wall time of the whole benchmark: {results['seconds']:.0f} s",
        "",
    ]
    id_all = results["in_distribution"]["overall"]
    shifted = results.get("shifted", {}).get("overall", {})
    unc = results["uncertainty"]
    lat = results["latency"]
    lines += ["## Summary against the targets", "", "| measure | value | target | |", "|---|---|---|---|",
              f"| mean DSC, in distribution | {_f(id_all.get('dsc'))} | >= 0.85 | {_verdict(id_all.get('dsc'), 0.85)} |"]
    if shifted:
        lines.append(f"| mean DSC, shifted | {_f(shifted.get('dsc'))} | >= 0.75 | {_verdict(shifted.get('dsc'), 0.75)} |")
    if "selection_accuracy" in id_all:
        lines.append(f"| text selection accuracy ({id_all['selection_rows']} rows) | "
                     f"{_f(id_all['selection_accuracy'])} | >= 0.90 | {_verdict(id_all['selection_accuracy'], 0.90)} |")
    lines += [
        f"| Spearman(mean entropy, 1 - DSC) | {_f(unc['spearman_entropy_vs_error'])} | >= 0.6 | "
        f"{_verdict(unc['spearman_entropy_vs_error'], 0.6)} |",
        f"| pixel AUROC of entropy for errors | {_f(unc['pixel_auroc'])} | >= 0.85 | {_verdict(unc['pixel_auroc'], 0.85)} |",
        f"| ECE (15 bins) | {_f(unc['ece'], 4)} | (lower is better) | |",
        f"| 30-sample map, seconds | {_f(lat['plain_30'], 3)} | <= 0.5 | {_verdict(lat['plain_30'], 0.5, False)} |",
        "",
        "## Per modality (DSC / NSD)",
        "",
        "NSD: the 2-D contour NSD at 2 px; NSD (authors): the same pair scored as the MedCLIPSeg authors "
        "score it (a one-slice volume whose flat faces count as surface), the rule of the paper's NSD numbers.",
        "",
        "| modality | rows | DSC in distribution | NSD in distribution | NSD (authors) in distribution | "
        "DSC shifted | NSD shifted | NSD (authors) shifted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    shifted_modalities = results.get("shifted", {}).get("by_modality", {})
    for name, row in results["in_distribution"]["by_modality"].items():
        other = shifted_modalities.get(name, {})
        lines.append(f"| {name} | {row['rows']} | {_f(row['dsc'])} | {_f(row['nsd'])} | {_f(row.get('nsd_authors'))} | "
                     f"{_f(other.get('dsc'))} | {_f(other.get('nsd'))} | {_f(other.get('nsd_authors'))} |")
    lines.append(f"| **all** | {id_all['rows']} | **{_f(id_all['dsc'])}** | **{_f(id_all['nsd'])}** | "
                 f"**{_f(id_all.get('nsd_authors'))}** | **{_f(shifted.get('dsc'))}** | **{_f(shifted.get('nsd'))}** | "
                 f"**{_f(shifted.get('nsd_authors'))}** |")
    lines += ["", "## Prompt designs (in distribution)", "", "| design | DSC | NSD | NSD (authors) | selection accuracy |",
              "|---|---|---|---|---|"]
    for design, row in results["designs"].items():
        lines.append(f"| {design} | {_f(row.get('dsc'))} | {_f(row.get('nsd'))} | {_f(row.get('nsd_authors'))} | "
                     f"{_f(row.get('selection_accuracy'))} |")
    lines += ["", "## Uncertainty quality", "", "| test set | Spearman(mean entropy, 1 - DSC) | pixel AUROC | ECE | pixel error rate |",
              "|---|---|---|---|---|",
              f"| in distribution | {_f(unc['spearman_entropy_vs_error'])} | {_f(unc['pixel_auroc'])} | {_f(unc['ece'], 4)} | "
              f"{_f(unc['pixel_error_rate'], 4)} |"]
    if "uncertainty_shifted" in results:
        us = results["uncertainty_shifted"]
        lines.append(f"| shifted | {_f(us['spearman_entropy_vs_error'])} | {_f(us['pixel_auroc'])} | {_f(us['ece'], 4)} | "
                     f"{_f(us['pixel_error_rate'], 4)} |")
    if results.get("ablations"):
        descriptions = dict(ABLATIONS)
        lines += ["", "## Ablations (stage 2 variants on the same stage-1 backbone)", "",
                  "| variant | DSC in distribution | DSC shifted | selection accuracy |", "|---|---|---|---|"]
        for name, row in results["ablations"].items():
            lines.append(f"| {descriptions[name]} | {_f(row['dsc'])} | {_f(row.get('shifted_dsc'))} | "
                         f"{_f(row.get('selection_accuracy'))} |")
    if results.get("data_fractions"):
        lines += ["", "## Data efficiency (share of the training images)", "",
                  "| training data | DSC in distribution | DSC shifted |", "|---|---|---|"]
        for name, pct in DATA_FRACTIONS:
            row = results["data_fractions"].get(name)
            if row:
                lines.append(f"| {pct} % | {_f(row['dsc'])} | {_f(row.get('shifted_dsc'))} |")
    lines += ["", "## Latency (whole `predict` call, one image, median)", "", "| sampling | seconds |", "|---|---|",
              f"| 30 samples | {_f(lat['plain_30'])} |", f"| 30 samples, antithetic pairs | {_f(lat['antithetic_30'])} |",
              f"| adaptive (stops when settled), antithetic | {_f(lat['adaptive_antithetic'])} |", "",
              "## Reproduce", "", "```bash",
              "medclipseg benchmark --out docs/results.md" + (f" --runs {config['runs']}" if config.get("runs") else ""),
              "```", ""]
    return "\n".join(lines)
