"""`medclipseg` command line: data, training, evaluation, prediction, the annotation queue and its models.

    medclipseg phantoms  --out data/phantoms --per-modality 400 --seed 0 [--shift]
    medclipseg pretrain  --config configs/demo/stage1.toml --data data/phantoms --out runs/demo/stage1
    medclipseg train     --data DATASET --out runs/busi [--config FILE.toml] [--init SOURCE] [--pct 25]
    medclipseg ship      runs/demo/pct100/best assets/demo-tiny [--stage1 runs/demo/stage1] [--data data/phantoms]
    medclipseg evaluate  --data DATASET --weights SOURCE [--design contradictory] [--out results.json]
    medclipseg benchmark --out docs/results.md [--weights SOURCE] [--runs runs/demo] [--data DATASET]
    medclipseg predict   --weights SOURCE --image scan.png|scan.nii.gz|series.zip --prompt "..." [--out-dir out/]
    medclipseg export    --out exports/v1 [--db feedback_db/annotations.db] [--val 0.1] [--test 0.2] [--zip]
    medclipseg ingest    --source FOLDER_OR_ZIP (--prompt "..." | --prompts-csv prompts.csv) [--db annotations.db] [--engine local|ray]
    medclipseg realdata  --out data/realdata [--structures brain,putamen] [--stride 2]   (needs mricron-data)
    medclipseg retrain   --db annotations.db [--epochs 12] [--promote auto|yes|no]
    medclipseg models    --db annotations.db [--json]
    medclipseg promote   --db annotations.db VERSION        medclipseg rollback --db annotations.db
    medclipseg rescore   --db annotations.db [--limit N] [--engine local|ray [--ray-address ADDR]]

`train` and `pretrain` read their settings from TOML files (`--config`, repeatable, later files
win) and then from the command line, which wins over every file. See docs/cli.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import sys
import typing
from pathlib import Path

# --------------------------------------------------------------------------------------
# settings that come from a config dataclass (train, pretrain, benchmark)


def _field_defaults(config_class) -> dict:
    """{field name: default} of a dataclass; fields without a default are left out."""
    defaults = {}
    for field in dataclasses.fields(config_class):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


def _shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _add_setting(parser, config_class, name: str, text: str, *, flag: str = None, **kwargs) -> None:
    """An option that sets field `name` of `config_class`.

    The option's own default is None ("not given"), so that a config file can set the field
    and the command line still wins over it; the help shows the dataclass default.
    """
    defaults = _field_defaults(config_class)
    if name not in {field.name for field in dataclasses.fields(config_class)}:
        raise KeyError(f"{config_class.__name__} has no field {name!r}")  # a programming error
    if kwargs.get("action") == "store_const":
        help_text = text  # a switch: its help says what it changes
    elif name in defaults:
        help_text = f"{text} (default: {_shown(defaults[name])})"
    else:
        help_text = f"{text} (required, here or in a --config file)"
    parser.add_argument(flag or "--" + name.replace("_", "-"), dest=name, default=None,
                        help=help_text.replace("%", "%%"), **kwargs)


def _add_config_files(parser, command: str) -> None:
    parser.add_argument("--config", action="append", metavar="FILE.toml",
                        help=f"TOML file of {command} settings (keys are the option names with underscores, "
                             f"e.g. batch_size); repeatable, later files win; options given here win over files")


def _check_value(path, key: str, value, hint):
    """`value` of `key` read from a config file, checked against the field's type."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]: TOML has no null, so the value is an X
        hint = next(argument for argument in arguments if argument is not type(None))
        origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    expected = origin or hint
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool):
        ok = False
    else:
        ok = isinstance(value, expected) if isinstance(expected, type) else True
    if not ok:
        name = getattr(expected, "__name__", str(expected))
        raise ValueError(f"{path}: '{key}' must be {name}, got {value!r}")
    return value


def read_config_files(paths, config_class, command: str) -> dict:
    """Settings of `config_class` from TOML files, later files winning; unknown keys are refused."""
    import tomllib

    hints = typing.get_type_hints(config_class)
    values = {}
    for path in paths or ():
        try:
            with open(path, "rb") as stream:
                data = tomllib.load(stream)
        except FileNotFoundError:
            raise ValueError(f"config file '{path}' not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not a valid TOML file: {exc}") from None
        for key, value in data.items():
            if key not in hints:
                raise ValueError(f"{path}: unknown key '{key}' for {command}; known keys: {', '.join(hints)}")
            values[key] = _check_value(path, key, value, hints[key])
    return values


def resolve_config(args, config_class, command: str):
    """The config of a command: dataclass defaults, then --config files, then the options given."""
    values = read_config_files(getattr(args, "config", None), config_class, command)
    for field in dataclasses.fields(config_class):
        value = getattr(args, field.name, None)
        if value is not None:
            values[field.name] = value
    defaults = _field_defaults(config_class)
    missing = [field.name for field in dataclasses.fields(config_class)
               if field.name not in values and field.name not in defaults]
    if missing:
        raise ValueError(f"give --{missing[0].replace('_', '-')} (or set '{missing[0]}' in a --config file)")
    return config_class(**values)


def _signature_default(function, name: str):
    return inspect.signature(function).parameters[name].default


# --------------------------------------------------------------------------------------
# value parsers


def _parse_modalities(text: str) -> tuple:
    from medclipseg.phantoms import MODALITIES

    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in MODALITIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown modality {', '.join(unknown) or text!r}; "
                                         f"choose from {', '.join(MODALITIES)}")
    return names


def _parse_floats(count: int, what: str):
    def parse(text: str) -> tuple:
        try:
            values = tuple(float(part) for part in text.split(","))
        except ValueError:
            values = ()
        if len(values) != count or any(v < 0 or not math.isfinite(v) for v in values) or sum(values) <= 0:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated non-negative numbers ({what}), "
                                             f"got {text!r}")
        return values
    return parse


def _comma_separated(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


# --------------------------------------------------------------------------------------
# the parser


def _add_data_options(parser, setting=None) -> None:
    """--data, --pct, --design; with `setting` (a config dataclass) their defaults come from it."""
    from medclipseg.datasets.layout import DATA_PERCENTAGES, PROMPT_DESIGNS

    pct_text = "percentage of the training data: the Train_text_<pct> and Val_text_<pct> tables (100 = the full tables)"
    if setting is not None:
        _add_setting(parser, setting, "data", "dataset folder in the authors' layout")
        _add_setting(parser, setting, "pct", pct_text, type=int, choices=DATA_PERCENTAGES)
        _add_setting(parser, setting, "design", "prompt design of the test table", choices=PROMPT_DESIGNS)
        return
    parser.add_argument("--data", required=True, help="dataset folder in the authors' layout")
    parser.add_argument("--pct", type=int, default=100, choices=DATA_PERCENTAGES,
                        help=f"{pct_text} (default: %(default)s)")
    parser.add_argument("--design", default="original", choices=PROMPT_DESIGNS,
                        help="prompt design of the test table (default: %(default)s)")


def _add_weights(parser) -> None:
    """--weights, worded alike for every command that loads a model."""
    parser.add_argument("--weights", default=None, help="model source (default: MEDCLIPSEG_WEIGHTS or demo)")


def _add_device(parser) -> None:
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda when available, else cpu)")


def _add_engine(parser) -> None:
    """--engine, --ray-address, --workers: where the model runs for a bulk command."""
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process, a batch of images per forward pass; ray: a Ray Data pool of "
                             "model workers (pip install 'medclipseg[scale]'), this machine's Ray unless "
                             "--ray-address names a cluster (default: %(default)s)")
    parser.add_argument("--ray-address", help="with --engine ray: a running cluster's address (host:port, "
                                              "ray://host:port or auto); default: start Ray on this machine")
    parser.add_argument("--workers", type=int, help="with --engine ray: model workers (default: one per GPU, "
                                                    "else one per two CPUs)")
    parser.add_argument("--precision", default="fp32",
                        help="arithmetic of the model: fp32; bf16 (on a CPU with AMX or AVX512-BF16: bfloat16 tower "
                             "matrix products, about 2.5x faster at the same agreement; on a GPU autocast); fp16 (GPU); "
                             "auto (bf16 where the CPU has it) (default: %(default)s)")


def _add_prediction_options(parser, *, seed_default=0) -> None:
    parser.add_argument("--num-samples", type=int, default=30,
                        help="Monte Carlo samples per image (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="probability above which a pixel is in the mask (default: %(default)s)")
    seed_text = "random seed of the sampling (default: %(default)s)" if seed_default is not None else \
        "random seed of the sampling (default: none, different samples on every call)"
    parser.add_argument("--seed", type=int, default=seed_default, help=seed_text)
    parser.add_argument("--mode", default="exact", choices=("exact", "fast"),
                        help="pre-processing: exact (the authors' pipeline, prompt padded to the tower's length) "
                             "or fast (prompt not padded; logits differ by a few hundredths) (default: %(default)s)")


def _add_phantoms(commands) -> None:
    from medclipseg.phantoms import MODALITIES, TARGET_COUNT_PROBS, write_dataset

    parser = commands.add_parser("phantoms", help="write a synthetic five-modality data set in the authors' layout",
                                 description="Write deterministic phantoms (breast ultrasound, brain MRI, "
                                             "dermoscopy, colonoscopy, chest X-ray) with masks, prompt tables "
                                             "and a phantoms.json manifest.")
    parser.add_argument("--out", required=True, help="output folder (new, empty, or a previous phantom output)")
    parser.add_argument("--per-modality", type=int, default=100, help="images per modality (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (default: %(default)s)")
    parser.add_argument("--shift", action="store_true",
                        help="out-of-distribution acquisition (noise, gamma, blur, low resolution, artefacts)")
    parser.add_argument("--modalities", type=_parse_modalities, default=MODALITIES,
                        help=f"comma-separated subset of {','.join(MODALITIES)} (default: all)")
    splits = _signature_default(write_dataset, "split_ratios")
    parser.add_argument("--splits", type=_parse_floats(3, "train,val,test"), default=splits,
                        help=f"train,val,test ratios (default: {_comma_separated(splits)})")
    parser.add_argument("--target-counts", type=_parse_floats(4, "P(0),P(1),P(2),P(3)"), default=TARGET_COUNT_PROBS,
                        help=f"probabilities of 0,1,2,3 targets per image "
                             f"(default: {_comma_separated(TARGET_COUNT_PROBS)})")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")


def _parse_structures(text: str) -> tuple:
    from medclipseg.datasets.realdata import STRUCTURES

    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in STRUCTURES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown structure {', '.join(unknown) or text!r}; "
                                         f"choose from {', '.join(STRUCTURES)}")
    return names


def _add_realdata(commands) -> None:
    from medclipseg.datasets.realdata import DEFAULT_STRUCTURES, DEFAULT_TEMPLATES_DIR, write_realdata

    parser = commands.add_parser("realdata", help="write axial MRI slices with atlas masks (Debian mricron-data) "
                                                  "in the authors' layout",
                                 description="Write 2-D axial slices of one subject's T1 MRI (Colin27, from the "
                                             "Debian package mricron-data) with masks of the brain and atlas "
                                             "structures, prompt tables and a realdata.json manifest.")
    parser.add_argument("--out", required=True, help="output folder (new, empty, or a previous realdata output)")
    parser.add_argument("--templates", default=str(DEFAULT_TEMPLATES_DIR),
                        help="folder of ch2.nii.gz, ch2bet.nii.gz, aal.nii.gz and aal.nii.txt (default: %(default)s)")
    parser.add_argument("--structures", type=_parse_structures, default=DEFAULT_STRUCTURES,
                        help=f"comma-separated subset of {','.join(DEFAULT_STRUCTURES)} (default: all)")
    for name, text in (("stride", "keep every N-th axial slice"),
                       ("margin", "absent slices written above and below each structure's extent, in slices (1 mm)"),
                       ("block", "slices per contiguous block of the split")):
        parser.add_argument(f"--{name}", type=int, default=_signature_default(write_realdata, name),
                            help=f"{text} (default: %(default)s)")
    splits = _signature_default(write_realdata, "split_ratios")
    parser.add_argument("--splits", type=_parse_floats(3, "train,val,test"), default=splits,
                        help=f"train,val,test ratios of the blocks (default: {_comma_separated(splits)})")


def _add_pretrain(commands) -> None:
    from medclipseg.training.config import PretrainConfig as C

    parser = commands.add_parser("pretrain", help="stage 1: align the tiny ViT with the frozen MiniLM text tower",
                                 description="Stage 1: train the tiny backbone's image tower against the frozen "
                                             "MiniLM text tower on image/caption pairs of the train split.")
    _add_config_files(parser, "pretrain")
    _add_setting(parser, C, "data", "dataset folder in the authors' layout (the train split is used)")
    _add_setting(parser, C, "out", "model folder written at the end")
    _add_setting(parser, C, "epochs", "passes over the training images", type=int)
    _add_setting(parser, C, "batch_size", "images per step", type=int)
    _add_setting(parser, C, "lr", "AdamW learning rate", type=float)
    _add_setting(parser, C, "dense_weight", "weight of the dense patch/caption term", type=float)
    _add_setting(parser, C, "seed", "random seed", type=int)
    _add_setting(parser, C, "max_steps", "stop after this many steps (for quick checks)", type=int)
    _add_setting(parser, C, "model", "JSON overrides of the tiny backbone's config, e.g. '{\"width\": 64}'")
    _add_setting(parser, C, "device", "torch device, e.g. cpu or cuda:0; none picks cuda when available, else cpu")


def _add_train(commands) -> None:
    from medclipseg.registry import BACKBONES
    from medclipseg.training.config import TrainConfig as C

    parser = commands.add_parser("train", help="stage 2: train adapters and head on a dataset in the authors' layout",
                                 description="Stage 2: train the adapters, upscaler and mask head with both towers "
                                             "frozen. Resumes from <out>/last.pt when the run folder has one.")
    _add_config_files(parser, "train")
    _add_data_options(parser, setting=C)
    _add_setting(parser, C, "out", "run folder (checkpoints, history); resumed if it exists")
    _add_setting(parser, C, "backbone", "backbone built when --init is not given", choices=sorted(BACKBONES))
    _add_setting(parser, C, "init", "start from weights: demo, our model folder or an authors' .pth "
                 "(path, hf:// or package://); none: a fresh --backbone")
    _add_setting(parser, C, "epochs", "epochs of the cosine schedule", type=int)
    _add_setting(parser, C, "batch_size", "images per step", type=int)
    _add_setting(parser, C, "lr", "Adam learning rate at the start", type=float)
    _add_setting(parser, C, "min_lr", "learning rate at the end of the cosine schedule", type=float)
    _add_setting(parser, C, "seed", "random seed (data order, augmentation, sampling)", type=int)
    _add_setting(parser, C, "max_steps_per_epoch", "cap on steps per epoch (for quick checks)", type=int)
    _add_setting(parser, C, "validate", "skip the validation pass after each epoch (best/ then keeps the epoch of "
                 "lowest training loss)",
                 flag="--no-validate", action="store_const", const=False)
    _add_setting(parser, C, "resume", "start over even if the run folder has a checkpoint",
                 flag="--no-resume", action="store_const", const=False)
    _add_setting(parser, C, "device", "torch device, e.g. cpu or cuda:0; none picks cuda when available, else cpu")
    _add_setting(parser, C, "contrastive_weight", "weight of the soft patch contrastive loss (0 for the ablation)",
                 type=float)
    _add_setting(parser, C, "stochastic", "ablation: train and predict with the value means "
                 "(no probabilistic attention)", flag="--means-only", action="store_const", const=False)
    _add_setting(parser, C, "fusion_layers", "ablation: no adapters, train upscaler and head only",
                 flag="--head-only", action="store_const", const=[])


def _add_ship(commands) -> None:
    parser = commands.add_parser("ship", help="copy a trained model into a model folder and write its model card",
                                 description="Copy config.json and model.safetensors of a trained model (e.g. "
                                             "runs/demo/pct100/best) to a destination and write README.md.")
    parser.add_argument("run", help="trained model folder (config.json + model.safetensors)")
    parser.add_argument("destination", help="model folder to write, e.g. assets/demo-tiny")
    parser.add_argument("--stage1", help="the stage-1 model folder (its settings go into the card)")
    parser.add_argument("--data", help="the training data folder (its phantoms.json goes into the card)")
    parser.add_argument("--results", help="benchmark JSON (docs/results.json) for the card's scores")


def _add_benchmark(commands) -> None:
    from medclipseg.evaluation.report import BenchmarkConfig as C

    parser = commands.add_parser("benchmark", help="regenerate the results report (docs/results.md)",
                                 description="Evaluate a model on fresh phantom test sets (or given ones) and "
                                             "write the results report with its JSON beside it.")
    defaults = _field_defaults(C)
    parser.add_argument("--out", default=defaults["out"], help="report to write (default: %(default)s)")
    _add_weights(parser)
    parser.add_argument("--runs", help="folder with ablation and data-fraction runs (<name>/best)")
    parser.add_argument("--data", help="test set in the authors' layout instead of fresh phantoms")
    parser.add_argument("--shifted-data", help="a second, shifted test set in the authors' layout")
    parser.add_argument("--work", default=defaults["work"],
                        help="where fresh phantom test sets are written (default: %(default)s)")
    parser.add_argument("--per-modality", type=int, default=defaults["per_modality"],
                        help="test phantoms per modality (default: %(default)s)")
    parser.add_argument("--num-samples", type=int, default=defaults["num_samples"],
                        help="Monte Carlo samples per image for the main table (default: %(default)s)")
    parser.add_argument("--secondary-samples", type=int, default=defaults["secondary_samples"],
                        help="samples per image for prompt designs, ablations and data fractions "
                             "(default: %(default)s)")
    _add_device(parser)


def _add_evaluate(commands) -> None:
    parser = commands.add_parser("evaluate", help="DSC/NSD of a model on a split",
                                 description="Predict every row of a split's prompt table and write DSC and NSD "
                                             "per image and overall.")
    _add_data_options(parser)
    _add_weights(parser)
    parser.add_argument("--split", default="test", choices=("train", "val", "test"),
                        help="split to evaluate (default: %(default)s)")
    _add_prediction_options(parser)
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--out", default="results.json", help="results JSON (default: %(default)s)")
    _add_device(parser)


def _add_predict(commands) -> None:
    parser = commands.add_parser("predict", help="segment one image or volume; writes mask and uncertainty maps",
                                 description="Segment one image or volume with a text prompt. An image gives "
                                             "<stem>_mask.png and <stem>_maps.npz (probability, entropy, mutual "
                                             "information); a volume (NIfTI file, DICOM series folder or zip) "
                                             "gives <stem>_mask.nii.gz, <stem>_probability.nii.gz and "
                                             "<stem>_entropy.nii.gz on the scan's own grid.")
    _add_weights(parser)
    parser.add_argument("--image", required=True,
                        help="image file (PNG, JPEG, TIFF, DICOM, ...), NIfTI volume (.nii, .nii.gz), or a DICOM "
                             "series as a folder or .zip")
    parser.add_argument("--prompt", required=True, help="text prompt describing the target")
    _add_prediction_options(parser, seed_default=None)
    parser.add_argument("--series", type=int, default=None,
                        help="volumes: which series of a DICOM folder or zip holding several (0-based, as the "
                             "refusal lists them) (default: refuse a source with several series)")
    parser.add_argument("--window", default=None,
                        help="volumes: intensity window, a CT preset (Soft tissue, Lung, Bone, Brain, Liver, "
                             "Mediastinum) or CENTER,WIDTH in the scan's units (default: Soft tissue for CT, "
                             "the 0.5-99.5th percentiles otherwise)")
    parser.add_argument("--out-dir", default=".", help="folder for the mask and maps (default: %(default)s)")
    _add_device(parser)


def _add_export(commands) -> None:
    from medclipseg.annotation.export import export_dataset

    parser = commands.add_parser("export", help="export corrected annotations as a dataset in the authors' layout",
                                 description="Write the latest corrected or accepted mask of every reviewed case "
                                             "as a dataset that `medclipseg train --data` reads.")
    parser.add_argument("--db", help="annotation database (default: MEDCLIPSEG_DB or feedback_db/annotations.db)")
    parser.add_argument("--out", required=True, help="export folder (must be new or empty, see --overwrite)")
    parser.add_argument("--val", type=float, default=_signature_default(export_dataset, "val_fraction"),
                        help="fraction of images for validation (default: %(default)s)")
    parser.add_argument("--test", type=float, default=_signature_default(export_dataset, "test_fraction"),
                        help="fraction of images for testing; gold cases go to test as well, whatever this says "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=_signature_default(export_dataset, "seed"),
                        help="seed of the split (default: %(default)s)")
    parser.add_argument("--status", action="append", choices=("corrected", "accepted"),
                        help="export cases with this status (repeatable; default: corrected and accepted)")
    parser.add_argument("--annotator", help="export only this annotator's corrections")
    parser.add_argument("--zip", action="store_true", help="also write <out>.zip")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    parser.add_argument("--format", default="authors", choices=("authors", "nifti", "dicom-seg"),
                        help="volume cases: authors (their reviewed slices in the authors' layout only), nifti "
                             "(also scan, mask, probability and entropy as NIfTI on the scan's grid) or dicom-seg "
                             "(also a DICOM-SEG for DICOM-sourced volumes) (default: %(default)s)")
    parser.add_argument("--consensus", default=_signature_default(export_dataset, "consensus"),
                        choices=("staple", "majority"),
                        help="the label of a case with several raters: their STAPLE consensus or a majority vote "
                             "(default: %(default)s)")


def _add_ingest(commands) -> None:
    parser = commands.add_parser("ingest", help="add a folder or .zip of images to the review queue (predicted)",
                                 description="Predict every image of a folder or .zip and add it to the "
                                             "annotation database's review queue.")
    parser.add_argument("--db", help="annotation database (default: MEDCLIPSEG_DB or feedback_db/annotations.db)")
    parser.add_argument("--source", required=True,
                        help="folder (searched recursively) or .zip of images, NIfTI scans and DICOM series "
                             "(each scan one volume case)")
    prompt_source = parser.add_mutually_exclusive_group(required=True)
    prompt_source.add_argument("--prompt", help="one prompt for every image")
    prompt_source.add_argument("--prompts-csv",
                               help="CSV with columns image,prompt (or the authors' Image,Description)")
    parser.add_argument("--batch", help="batch name stored with the cases (the queue can be limited to it)")
    _add_weights(parser)
    parser.add_argument("--batch-size", type=int, default=8,
                        help="images read and predicted together (one forward pass where they fit), then "
                             "stored one by one (default: %(default)s)")
    _add_prediction_options(parser)
    _add_device(parser)
    _add_engine(parser)


def _add_db(parser) -> None:
    parser.add_argument("--db", help="annotation database: an SQLite file or a postgresql:// URL "
                                      "(default: MEDCLIPSEG_DB or feedback_db/annotations.db)")


def _add_by(parser) -> None:
    parser.add_argument("--by", help="who does it, recorded with the version (default: the login name)")


def _add_retrain(commands) -> None:
    from medclipseg.annotation.retraining import PROMOTE_CHOICES

    parser = commands.add_parser("retrain", help="fine-tune the current model on the reviewed cases (blocking)",
                                 description="Fine-tune the database's current model on its corrected and accepted "
                                             "cases (gold cases held out), score it on the gold split and record "
                                             "it as a model version. The last line reads version=... parent=... "
                                             "gold_dsc=... parent_gold_dsc=... promoted=yes|no.")
    _add_db(parser)
    parser.add_argument("--epochs", type=int, help="epochs of the round (default: the recipe's)")
    parser.add_argument("--recipe", help="a TOML file of RetrainRecipe fields (default: the built-in recipe, "
                                         "configs/retrain/coffee-break.toml)")
    parser.add_argument("--promote", choices=PROMOTE_CHOICES, default="auto",
                        help="auto: promote only when it beats the current version on the gold split "
                             "(default: %(default)s)")
    _add_by(parser)
    parser.add_argument("--job", type=int, help="run the job row the app made (the app's worker uses this)")
    _add_weights(parser)
    _add_device(parser)


def _add_models(commands) -> None:
    parser = commands.add_parser("models", help="list the database's model versions (the current one marked *)",
                                 description="Every model version: id, parent, who made it, training and gold "
                                             "cases, gold DSC/NSD and uncertainty quality.")
    _add_db(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_promote(commands) -> None:
    parser = commands.add_parser("promote", help="make a model version current (the queue re-ranks by it)",
                                 description="Make VERSION the current model of the database.")
    _add_db(parser)
    parser.add_argument("version", help="a version id as `medclipseg models` lists it")
    _add_by(parser)


def _add_rollback(commands) -> None:
    parser = commands.add_parser("rollback", help="make the version promoted before the current one current again",
                                 description="Undo the last promotion; run again to go further back.")
    _add_db(parser)
    _add_by(parser)


def _add_project(commands) -> None:
    parser = commands.add_parser("project", help="show or change the project's settings (review step, raters per case)",
                                 description="Without options, print the settings; with them, change them first.")
    _add_db(parser)
    parser.add_argument("--review", choices=("on", "off"),
                        help="on: only versions a reviewer approved train and export")
    parser.add_argument("--raters", type=int, help="how many different annotators label each case (1 to 10)")


def _add_agreement(commands) -> None:
    parser = commands.add_parser("agreement", help="how far a case's raters agree, and their consensus",
                                 description="Pairwise Dice of the raters' newest masks, each rater against the "
                                             "consensus, STAPLE's sensitivity and specificity, and how well the "
                                             "model's entropy map predicts where the raters disagree (pixel AUROC "
                                             "and Spearman), as JSON; without --case, that last figure for every "
                                             "case with several raters.")
    _add_db(parser)
    parser.add_argument("--case", type=int, help="the case id (default: every case with several raters)")
    parser.add_argument("--method", choices=("staple", "majority"), default="staple", help="consensus (default staple)")


def _add_snapshot(commands) -> None:
    parser = commands.add_parser("snapshot", help="copy the database and its files into a folder that outlives the "
                                                  "machine (a mounted bucket) or a Hub dataset",
                                 description="A consistent copy (SQLite's backup API) plus the files not yet "
                                             "mirrored; the newest --keep copies are kept.")
    _add_db(parser)
    parser.add_argument("--to", required=True, help="the snapshot folder, or hf://datasets/<owner>/<name>[/<folder>] "
                                                    "(written with HF_TOKEN)")
    parser.add_argument("--keep", type=int, default=8, help="how many snapshots to keep (default 8)")


def _add_restore(commands) -> None:
    parser = commands.add_parser("restore", help="put the newest readable snapshot in place of a missing database",
                                 description="Refused when the database exists: a live database is never replaced.")
    _add_db(parser)
    parser.add_argument("--from", dest="source", required=True,
                        help="the snapshot folder, or hf://datasets/<owner>/<name>[/<folder>]")


def _add_copy_db(commands) -> None:
    parser = commands.add_parser("copy-db", help="copy the database and its files into a new, empty database "
                                                 "(an SQLite file into a team's PostgreSQL)",
                                 description="Every row with its ids and every file, then a row-by-row check of "
                                             "the copy; refused when the target holds cases.")
    _add_db(parser)
    parser.add_argument("--to", required=True, help="the target database (a postgresql:// URL or an SQLite file)")
    parser.add_argument("--files-dir", help="the target's files folder (default: MEDCLIPSEG_FILES_DIR or "
                                            "feedback_db/<database name>_files; beside the file for SQLite)")


def _add_users(commands) -> None:
    parser = commands.add_parser("users", help="list, add or remove the logins kept in the annotation database",
                                 description="Logins beside MEDCLIPSEG_AUTH, kept in the database as salted "
                                             "PBKDF2 hashes; a running app sees a change at its next sign-in "
                                             "or request.")
    _add_db(parser)
    parser.add_argument("action", choices=("list", "add", "remove"), help="what to do")
    parser.add_argument("name", nargs="?", help="the user (for add and remove)")
    parser.add_argument("--role", default="annotator", help="annotator (default), reviewer or admin (for add)")
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input (else it is asked for)")
    parser.add_argument("--replace", action="store_true", help="give an existing user a new password and role")
    _add_by(parser)


def _add_rescore(commands) -> None:
    parser = commands.add_parser("rescore", help="predict unreviewed cases again with the current model version",
                                 description="Re-rank the queue by the current model: every unreviewed case not "
                                             "yet predicted by it is predicted again (the app does this in the "
                                             "background after a promotion).")
    _add_db(parser)
    parser.add_argument("--limit", type=int, help="re-score at most this many cases (default: all)")
    parser.add_argument("--num-samples", type=int, default=16,
                        help="Monte-Carlo samples per case (default: %(default)s)")
    _add_device(parser)
    _add_engine(parser)


def build_parser() -> argparse.ArgumentParser:
    """The `medclipseg` parser with every command (imports the modules that declare the defaults)."""
    parser = argparse.ArgumentParser(prog="medclipseg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="one of the commands below; `medclipseg COMMAND --help` lists its options")
    for add in (_add_phantoms, _add_pretrain, _add_train, _add_ship, _add_evaluate, _add_benchmark, _add_predict,
                _add_export, _add_ingest, _add_realdata, _add_retrain, _add_models, _add_promote, _add_rollback,
                _add_rescore, _add_project, _add_agreement, _add_snapshot, _add_restore, _add_copy_db, _add_users):
        add(commands)
    return parser


# --------------------------------------------------------------------------------------
# the commands


def run_train(args) -> int:
    from medclipseg.training.config import TrainConfig
    from medclipseg.training.stage2 import train

    config = resolve_config(args, TrainConfig, "train")
    result = train(config)
    print(json.dumps({"best": result["best"], "last": result["last"], "epochs": len(result["history"])}))
    return 0


def run_phantoms(args) -> int:
    from medclipseg.phantoms import write_dataset

    if args.per_modality < 1:
        raise ValueError(f"--per-modality must be at least 1, got {args.per_modality}")
    summary = write_dataset(args.out, per_modality=args.per_modality, seed=args.seed, shift=args.shift,
                            modalities=args.modalities, split_ratios=args.splits, progress=args.progress,
                            target_count_probs=args.target_counts)
    print(json.dumps(summary, separators=(",", ":")))
    return 0


def run_realdata(args) -> int:
    from medclipseg.datasets.realdata import write_realdata

    result = write_realdata(args.out, templates=args.templates, structures=args.structures, stride=args.stride,
                            margin=args.margin, block=args.block, split_ratios=args.splits)
    print(json.dumps(result.summary(), separators=(",", ":")))
    return 0


def run_pretrain(args) -> int:
    from medclipseg.training.config import PretrainConfig
    from medclipseg.training.stage1 import pretrain

    if args.model is not None:
        try:
            args.model = json.loads(args.model)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--model must be a JSON object: {exc}") from None
        if not isinstance(args.model, dict):
            raise ValueError(f"--model must be a JSON object, got {args.model!r}")
    config = resolve_config(args, PretrainConfig, "pretrain")
    result = pretrain(config)
    print(json.dumps({"out": result["out"], "seconds": result["seconds"], "final": result["history"][-1]}))
    return 0


def run_ship(args) -> int:
    from medclipseg.weights.ship import ship

    print(ship(args.run, args.destination, args.stage1, args.data, args.results))
    return 0


def run_benchmark(args) -> int:
    from medclipseg.evaluation.report import BenchmarkConfig, run_benchmark as benchmark

    config = BenchmarkConfig(out=args.out, weights=args.weights, runs=args.runs, data=args.data,
                             shifted_data=args.shifted_data, work=args.work, per_modality=args.per_modality,
                             num_samples=args.num_samples, secondary_samples=args.secondary_samples,
                             device=args.device)
    results = benchmark(config)
    print(json.dumps({"out": args.out, "dsc": results["in_distribution"]["overall"].get("dsc"),
                      "seconds": results["seconds"]}))
    return 0


def run_evaluate(args) -> int:
    from medclipseg.datasets.layout import load_split
    from medclipseg.evaluation.evaluate import evaluate_samples, write_results
    from medclipseg.inference.predictor import Predictor

    samples = load_split(args.data, args.split, design=args.design, pct=args.pct)
    if args.limit:
        samples = samples[: args.limit]
    predictor = Predictor.from_pretrained(args.weights, mode=args.mode, device=args.device)
    results = evaluate_samples(predictor, samples, num_samples=args.num_samples, threshold=args.threshold,
                               seed=args.seed)
    results["config"] = {"data": str(args.data), "split": args.split, "design": args.design, "pct": args.pct,
                         "weights": predictor.model_id, "num_samples": args.num_samples,
                         "threshold": args.threshold, "mode": args.mode, "seed": args.seed}
    path = write_results(results, args.out)
    print(json.dumps({**results["summary"], "results": str(path)}))
    return 0


def _is_volume_source(path: Path) -> bool:
    """NIfTI files, folders (DICOM series) and zips (of a DICOM series) are volumes; any other file
    is a 2-D image (a single DICOM file included)."""
    from medclipseg.io.volumes import is_nifti_name

    return is_nifti_name(path.name) or path.is_dir() or path.name.lower().endswith(".zip")


def _volume_stem(path: Path, series) -> str:
    name = path.name.rstrip("/") or path.resolve().name
    for suffix in (".nii.gz", ".nii", ".zip"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name + (f"_series{series}" if series is not None else "")


def _parse_window(text):
    """--window: None, a preset name, or "CENTER,WIDTH" as two numbers."""
    if text is None:
        return None
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) == 2:
        try:
            return float(parts[0]), float(parts[1])
        except ValueError:
            pass
    if len(parts) != 1 or not parts[0]:
        raise ValueError(f"--window is a CT preset name or CENTER,WIDTH (two numbers); got {text!r}")
    return parts[0]


def _json_number(value):
    """Scores as plain JSON numbers (numpy scalars and non-finite floats made portable)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int) or getattr(value, "dtype", None) is not None and value.dtype.kind in "iu":
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None


def run_predict_volume(args, source: Path) -> int:
    """predict on a volume: read and check everything before the model loads, write the three files
    together (none stays when one fails)."""
    import numpy as np

    from medclipseg.inference.predictor import Predictor
    from medclipseg.inference.volume import predict_volume, volume_window
    from medclipseg.io.prompts import validate_prompt
    from medclipseg.io.volume_writers import write_nifti
    from medclipseg.io.volumes import is_nifti_name, read_volume

    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    if args.series is not None:
        if is_nifti_name(source.name):
            raise ValueError("--series picks one series of a DICOM folder or zip; a NIfTI file holds one volume")
        if args.series < 0:
            raise ValueError(f"--series counts from 0; got {args.series}")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be at least 1, got {args.num_samples}")
    if not 0.0 < args.threshold < 1.0:
        raise ValueError(f"--threshold must lie strictly between 0 and 1, got {args.threshold:g}")
    prompt = validate_prompt(args.prompt)
    if is_nifti_name(source.name):
        volume = read_volume(source)
    else:
        from medclipseg.io.dicom_series import read_dicom_volume

        volume = read_dicom_volume(source, series_index=args.series)
    window = _parse_window(args.window)
    volume_window(volume, window)  # a bad window is refused before the model loads

    predictor = Predictor.from_pretrained(args.weights, mode=args.mode, device=args.device)
    prediction = predict_volume(predictor, volume, prompt, num_samples=args.num_samples, threshold=args.threshold,
                                seed=args.seed, window=window)
    out = Path(args.out_dir)
    stem = _volume_stem(source, args.series)
    files = {"mask": (out / f"{stem}_mask.nii.gz", prediction.mask, np.uint8),
             "probability": (out / f"{stem}_probability.nii.gz", prediction.probability, np.float32),
             "entropy": (out / f"{stem}_entropy.nii.gz", prediction.entropy, np.float32)}
    created = not out.exists()
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path, values, dtype in files.values():
            written.append(write_nifti(volume, values, path, dtype=dtype))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    for note in prediction.conversions:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps({"mask": str(files["mask"][0]), "probability": str(files["probability"][0]),
                      "entropy": str(files["entropy"][0]), "shape": list(volume.shape),
                      "spacing_mm": [round(v, 6) for v in volume.spacing], "slice_plane": prediction.slice_plane,
                      "start_slice": int(prediction.start_slice), "window": list(prediction.window),
                      "num_samples": prediction.num_samples, "threshold": prediction.threshold,
                      "seconds": round(prediction.seconds, 3),
                      "scores": {key: _json_number(value) for key, value in prediction.scores.items()}}))
    return 0


def run_predict(args) -> int:
    import cv2
    import numpy as np

    from medclipseg.inference.predictor import Predictor

    source = Path(args.image)
    if _is_volume_source(source):
        return run_predict_volume(args, source)
    if args.series is not None or args.window is not None:
        option = "--series" if args.series is not None else "--window"
        raise ValueError(f"{option} applies to volumes (NIfTI files, DICOM series folders and zips); "
                         f"{source.name} is read as a 2-D image")
    predictor = Predictor.from_pretrained(args.weights, mode=args.mode, device=args.device)
    prediction = predictor.predict(args.image, args.prompt, num_samples=args.num_samples,
                                   threshold=args.threshold, seed=args.seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    cv2.imwrite(str(out / f"{stem}_mask.png"), prediction.mask.astype(np.uint8) * 255)
    np.savez_compressed(out / f"{stem}_maps.npz", probability=prediction.probability, entropy=prediction.entropy,
                        mutual_information=prediction.mutual_information)
    print(json.dumps({"mask": str(out / f"{stem}_mask.png"), "maps": str(out / f"{stem}_maps.npz"),
                      "num_samples": prediction.num_samples, "seconds": round(prediction.seconds, 3),
                      **prediction.scores}))
    return 0


def run_export(args) -> int:
    import sqlite3

    from medclipseg import settings
    from medclipseg.annotation.export import EXPORTABLE_STATUSES, export_dataset
    from medclipseg.annotation.sql import parse_location
    from medclipseg.annotation.store import AnnotationStore, StorageError

    location = parse_location(args.db if args.db else settings.db_location())
    db = location.path if location.is_sqlite else location
    if location.is_sqlite and not db.is_file():
        raise ValueError(f"No annotation database at '{db}' (give --db or set MEDCLIPSEG_DB).")
    try:
        store = AnnotationStore(db)
        try:
            result = export_dataset(store, args.out, val_fraction=args.val, test_fraction=args.test, seed=args.seed,
                                    statuses=tuple(args.status or EXPORTABLE_STATUSES), annotator=args.annotator,
                                    make_zip=args.zip, overwrite=args.overwrite, volume_format=args.format,
                                    consensus=args.consensus)
        finally:
            store.close()
    except (StorageError, sqlite3.DatabaseError) as exc:
        raise ValueError(f"{location.label}: {exc}") from None
    empty = [split for split, count in result.counts.items() if count == 0]
    if empty:
        hint = " (train with --no-validate)" if "val" in empty else ""
        print(f"medclipseg export: note: no cases in the {' and '.join(empty)} split{hint}", file=sys.stderr)
    print(json.dumps({"out": str(result.root), "counts": result.counts, "total": sum(result.counts.values()),
                      "manifest": str(result.manifest_path),
                      "zip": str(result.zip_path) if result.zip_path else None}))
    return 0


def run_ingest(args) -> int:
    from medclipseg.io.prompts import validate_prompt
    from medclipseg.inference.predictor import Predictor
    from medclipseg.annotation.ingest import ingest, read_prompt_csv, scan_source

    # Check the inputs before the model is loaded, so that a typo fails at once.
    _check_engine_options(args)
    prompts = read_prompt_csv(args.prompts_csv) if args.prompts_csv else None
    prompt = validate_prompt(args.prompt) if args.prompt is not None else None
    total = len(scan_source(args.source))
    store = _store_with_model(args)
    try:
        print(f"{total} images and scan files in {args.source}; database {store.location.label}", flush=True)
        # The database's current version unless --weights names another model.
        source = args.weights if args.weights else store.model_source(store.current_model_id())
        predictor = Predictor.from_pretrained(source, mode=args.mode, device=args.device, precision=args.precision)
        if predictor.model_id != store.current_model_id():
            print(f"note: the queue ranks by the current version {store.current_model_id()}; predictions by "
                  f"{predictor.model_id} are stored but not ranked until it is promoted", flush=True)
            # Recorded as a version, so that it can be promoted by its id.
            store.add_base_version(predictor.model_id, source=str(predictor.source or args.weights),
                                   name=predictor.model_id.split("@")[0], by=_who(args))

        def progress(done: int, total: int, message: str) -> None:
            print(f"[{done}/{total}] {message}", flush=True)

        def predict_volume(volume, text, **options):
            from medclipseg.inference.volume import predict_volume as predict

            return predict(predictor, volume, text, **options)

        if args.engine == "ray":
            from medclipseg.scale.bulk import ingest_with_engine

            engine = _ray_engine(args, source, predictor.model_id)
            print(f"engine: {engine.describe()}", flush=True)
            report = ingest_with_engine(store, engine, args.source, model_id=predictor.model_id, prompt=prompt,
                                        prompts_csv=prompts, batch=args.batch, num_samples=args.num_samples,
                                        threshold=args.threshold, seed=args.seed, progress=progress)
        else:
            report = ingest(store, predictor, args.source, prompt=prompt, prompts_csv=prompts, batch=args.batch,
                            batch_size=args.batch_size, num_samples=args.num_samples, threshold=args.threshold,
                            seed=args.seed, progress=progress, predict_volume=predict_volume)
    finally:
        store.close()
    print(report.summary())
    return 0


def _who(args) -> str:
    import getpass

    if getattr(args, "by", None):
        return args.by
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers)
        return "cli"


def _store_with_model(args):
    """The database, with a current model version: a new one records --weights (or the configured
    model) as its base version, which is then the model every command uses."""
    from medclipseg.annotation.store import AnnotationStore

    store = AnnotationStore(args.db)
    if store.current_model_id() is None:
        from medclipseg.registry import load_model

        loaded = load_model(getattr(args, "weights", None), device="cpu")
        store.ensure_base_version(loaded.model_id, source=str(loaded.source), name=loaded.model_id.split("@")[0],
                                  by=_who(args))
    return store


def run_retrain(args) -> int:
    from medclipseg.annotation.retraining import run_retrain as retrain
    from medclipseg.training.config import load_recipe

    recipe = load_recipe(args.recipe) if args.recipe else None
    store = _store_with_model(args)
    try:
        outcome = retrain(store, by=_who(args), recipe=recipe, epochs=args.epochs, promote=args.promote,
                          job_id=args.job, device=args.device, log=lambda line: print(line, flush=True))
    finally:
        store.close()
    print(outcome.summary_line(), flush=True)
    return 0


def _format(value, digits: int = 3) -> str:
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def run_models(args) -> int:
    store = _store_with_model(args)
    try:
        versions = store.model_versions()
    finally:
        store.close()
    if args.json:
        print(json.dumps([dataclasses.asdict(version) for version in versions], indent=2))
        return 0
    print(f"{'':1} {'version':24} {'parent':24} {'kind':7} {'created (UTC)':19} {'by':12} {'train':>5} "
          f"{'gold':>4} {'gold DSC':>8} {'gold NSD':>8} {'unc. rho':>8}")
    for version in versions:
        print(f"{'*' if version.current else ' '} {version.id:24} {version.parent_id or '-':24} {version.kind:7} "
              f"{version.created_at[:19].replace('T', ' '):19} {version.created_by[:12]:12} "
              f"{_format(version.train_cases):>5} {_format(version.gold_cases):>4} {_format(version.gold_dsc):>8} "
              f"{_format(version.gold_nsd):>8} {_format(version.gold_uncertainty_spearman):>8}")
    return 0


def run_promote(args) -> int:
    store = _store_with_model(args)
    try:
        version = store.promote(args.version, by=_who(args))
    finally:
        store.close()
    print(f"current={version.id}")
    return 0


def run_rollback(args) -> int:
    store = _store_with_model(args)
    try:
        version = store.rollback(by=_who(args))
    finally:
        store.close()
    print(f"current={version.id}")
    return 0


def run_project(args) -> int:
    from medclipseg.annotation.store import AnnotationStore

    store = AnnotationStore(args.db)
    try:
        changes = {}
        if args.review is not None:
            changes["review_required"] = args.review == "on"
        if args.raters is not None:
            changes["raters_per_case"] = args.raters
        settings_now = store.set_project_settings(**changes) if changes else store.project_settings()
    finally:
        store.close()
    print(f"review_required={int(settings_now.review_required)} raters_per_case={settings_now.raters_per_case}")
    return 0


def run_agreement(args) -> int:
    import json

    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore

    store = AnnotationStore(args.db)
    service = AnnotationService(store)  # stored predictions only: no model is loaded
    try:
        if args.case is None:
            print(json.dumps(service.uncertainty_vs_disagreement_report()))
            return 0
        store.get_case(args.case)
        found = store.case_agreement(args.case, method=args.method)
        print(json.dumps({"case_id": args.case, **({"raters": []} if found is None else found.summary()),
                          "uncertainty_vs_disagreement": service.uncertainty_vs_disagreement(args.case)}))
    finally:
        service.close()
        store.close()
    return 0


def run_snapshot(args) -> int:
    from medclipseg import settings
    from medclipseg.annotation.snapshots import take_snapshot

    from medclipseg.annotation.sql import parse_location

    location = parse_location(args.db or settings.db_location())
    if not location.is_sqlite:
        raise ValueError(f"{location.label} is a PostgreSQL database: its server keeps it (back it up with "
                         "pg_dump); snapshots are for an SQLite file.")
    taken = take_snapshot(location.path, args.to, keep=args.keep)
    print(f"snapshot={taken.path} files_copied={taken.files_copied} seconds={taken.seconds:.2f}")
    return 0


def run_restore(args) -> int:
    from pathlib import Path

    from medclipseg import settings
    from medclipseg.annotation.snapshots import restore

    if args.db and "://" in args.db:
        raise ValueError("A snapshot restores an SQLite file; give --db a file path (a PostgreSQL database is "
                         "restored by its server, from pg_dump).")
    db_path = Path(args.db) if args.db else settings.db_path()
    if db_path.exists():
        raise ValueError(f"{db_path} exists; a live database is never replaced. Restore into a new path (--db).")
    used = restore(db_path, args.source)
    if used is None:
        raise FileNotFoundError(f"There is no readable snapshot of {db_path.name} in {args.source}.")
    print(f"restored={used} db={db_path}")
    return 0


def run_copy_db(args) -> int:
    from medclipseg.annotation.store import AnnotationStore
    from medclipseg.annotation.transfer import copy_database

    source = AnnotationStore(args.db)
    try:
        result = copy_database(source, args.to, target_files_dir=args.files_dir)
    finally:
        source.close()
    print(result.summary())
    return 0


def run_users(args) -> int:
    import getpass

    from medclipseg.annotation.store import AnnotationStore

    if args.action != "list" and not args.name:
        raise ValueError(f"Name the user to {args.action}: medclipseg users {args.action} NAME.")
    store = AnnotationStore(args.db)
    try:
        if args.action == "list":
            for row in store.user_list():
                print(f"{row['name']}\t{row['role']}\tadded {row['created_at'][:19].replace('T', ' ')} "
                      f"by {row['created_by']}")
        elif args.action == "remove":
            if not store.remove_user(args.name):
                raise ValueError(f"There is no user {args.name!r} in the database.")
            print(f"removed={args.name}")
        else:
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\r\n")
            else:
                password = getpass.getpass(f"Password for {args.name}: ")
                if getpass.getpass("Again: ") != password:
                    raise ValueError("The two passwords differ; nothing was changed.")
            name = store.add_user(args.name, password, role=args.role, by=args.by or "cli", replace=args.replace)
            print(f"user={name} role={store.users()[name]}")
    finally:
        store.close()
    return 0


def _ray_engine(args, source, model_id):
    """The Ray engine of a bulk command (checked before any work: an unreachable address fails at once)."""
    from medclipseg.scale.ray_engine import PredictorSpec, RayEngine

    spec = PredictorSpec(source=str(source), mode=getattr(args, "mode", "exact"), device=args.device,
                         precision=args.precision, model_id=model_id)
    return RayEngine(spec, address=args.ray_address, workers=args.workers,
                     batch_size=getattr(args, "batch_size", 8))


def _check_engine_options(args) -> None:
    from medclipseg.inference.acceleration import PRECISIONS

    if args.engine != "ray" and (args.ray_address or args.workers):
        raise ValueError("--ray-address and --workers go with --engine ray.")
    if str(args.precision).lower() not in PRECISIONS + ("auto",):
        raise ValueError(f"Unknown --precision {args.precision!r}; use one of {', '.join(PRECISIONS)}.")
    if args.workers is not None and args.workers < 1:
        raise ValueError("--workers must be at least 1.")
    if args.engine == "ray":
        from medclipseg.scale.ray_engine import connect

        connect(args.ray_address)  # before any work: an unreachable cluster fails at once


def run_rescore(args) -> int:
    from medclipseg.annotation.service import AnnotationService, check_samples

    _check_engine_options(args)
    store = _store_with_model(args)
    if args.engine == "ray":
        return _rescore_with_ray(args, store, check_samples(args.num_samples))
    service = AnnotationService(store, device=args.device, num_samples=args.num_samples, precision=args.precision)
    try:
        backlog = service.rescore_backlog()
        print(f"{backlog} unreviewed cases to re-score with {service.model_id}", flush=True)
        done = service.rescore_pending(limit=args.limit)
        model = service.model_id
    finally:
        service.close()
        store.close()
    print(f"rescored={done} model={model}")
    return 0


def _rescore_with_ray(args, store, num_samples: int) -> int:
    from medclipseg import settings
    from medclipseg.scale.bulk import rescore_with_engine

    try:
        model_id = store.current_model_id()
        engine = _ray_engine(args, store.model_source(model_id), model_id)
        print(f"{store.rescore_backlog(model_id)} unreviewed cases to re-score with {model_id}; engine: "
              f"{engine.describe()}", flush=True)

        def progress(done: int, total: int, message: str) -> None:
            print(f"[{done}/{total}] {message}", flush=True)

        report = rescore_with_engine(store, engine, model_id=model_id, num_samples=num_samples,
                                     volume_samples=settings.volume_samples(), limit=args.limit, progress=progress)
    finally:
        store.close()
    print(report.summary())
    print(f"rescored={len(report.rescored)} model={model_id}")
    return 0


def main(argv=None) -> int:
    from medclipseg.weights.checkpoint import CheckpointMismatchError
    from medclipseg.datasets.layout import LayoutError
    from medclipseg.io.images import ImageReadError
    from medclipseg.io.prompts import PromptError
    from medclipseg.weights.sources import WeightsSourceError
    from medclipseg.annotation.store import StorageError
    from medclipseg.scale.ray_engine import RayUnavailable

    args = build_parser().parse_args(argv)
    handlers = {"train": run_train, "evaluate": run_evaluate, "predict": run_predict, "phantoms": run_phantoms,
                "pretrain": run_pretrain, "ship": run_ship, "benchmark": run_benchmark, "export": run_export,
                "ingest": run_ingest, "realdata": run_realdata, "retrain": run_retrain, "models": run_models,
                "promote": run_promote, "rollback": run_rollback, "rescore": run_rescore, "project": run_project,
                "agreement": run_agreement, "snapshot": run_snapshot, "restore": run_restore,
                "copy-db": run_copy_db, "users": run_users}
    try:
        return handlers[args.command](args)
    except (LayoutError, ImageReadError, PromptError, WeightsSourceError, CheckpointMismatchError,
            StorageError, FileNotFoundError, ValueError, RayUnavailable) as exc:
        print(f"medclipseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
