"""Training loop for MedCLIPSeg adapters and head (frozen towers), readable in one sitting.

    loss = 0.5 soft Dice + 0.5 BCE-with-logits + 0.1 soft patch contrastive   (spec)
    Adam, lr 3e-4, cosine annealing to 1e-4 over the epochs, rotation augmentation.

Resumable: `<out>/last.pt` holds the trainable weights, optimiser, scheduler, epoch and RNG
states; `<out>/best/` and `<out>/last/` hold the model in our safetensors format.

Hooks for callers that run training as a job: `on_progress(TrainProgress)` after every optimiser
step, and `should_stop()` checked after every step (True raises TrainingCancelled before the
epoch's files are written, so the folder keeps the last complete epoch and nothing half-written).
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medclipseg.weights.checkpoint import save_pretrained
from medclipseg.datasets.torch_dataset import SegmentationDataset, collate
from medclipseg.datasets.layout import load_split
from medclipseg.training.config import TrainConfig  # still importable from here
from medclipseg.training.losses import segmentation_loss
from medclipseg.training.progress import ProgressClock, TrainingCancelled, TrainProgress  # noqa: F401
from medclipseg.evaluation.metrics import dice_score
from medclipseg.modeling.medclipseg import TRAINABLE_PREFIXES
from medclipseg.inference.tokenization import build_tokenizer
from medclipseg.registry import default_device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def initial_model(config: TrainConfig):
    """The backbone to train: loaded from `init` (any source of registry.load_model), else fresh."""
    from medclipseg.registry import build_backbone, load_model

    if config.init:
        model = load_model(config.init, device="cpu").model
    else:
        model = build_backbone(config.backbone)
    if config.fusion_layers is not None and tuple(config.fusion_layers) != tuple(model.fusion_layers):
        model = with_fusion_layers(model, config.fusion_layers)
    model.config.stochastic = bool(config.stochastic)
    model.freeze_backbone()
    return model


def with_fusion_layers(model, fusion_layers):
    """The same towers, upscaler and head with adapters before other layers (fresh adapters)."""
    from dataclasses import replace

    from medclipseg.registry import build_model

    config = replace(model.config, fusion_layers=tuple(fusion_layers))
    rebuilt = build_model(config)
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith("pvl_adapters.")}
    missing, unexpected = rebuilt.load_state_dict(kept, strict=False)
    assert not unexpected and all(k.startswith("pvl_adapters.") for k in missing), (missing, unexpected)
    return rebuilt


def trainable_state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if k.startswith(TRAINABLE_PREFIXES)}


@torch.no_grad()
def validation_dice(model, loader, device) -> float:
    """Mean per-image DSC of the deterministic (value-mean) prediction at threshold 0.5."""
    model.eval()
    scores = []
    for batch in loader:
        logits = model(batch["pixel_values"].to(device), batch["input_ids"].to(device), stochastic=False)["logits"]
        for predicted, truth in zip((logits > 0).cpu().numpy(), batch["mask"].numpy() > 0.5):
            scores.append(dice_score(predicted, truth))
    return float(np.mean(scores)) if scores else float("nan")


def train(config: TrainConfig, *, on_progress: Optional[Callable[[TrainProgress], None]] = None,
          should_stop: Optional[Callable[[], bool]] = None, metadata: Optional[dict] = None) -> dict:
    """Run stage 2 as configured; returns the history and the folders of the best and last model.

    metadata: extra entries recorded in every saved model's metadata (beside train_config,
    epoch, history and, when training starts from `init`, init_model_id).
    """
    seed_everything(config.seed)
    device = torch.device(config.device) if config.device else default_device()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    model = initial_model(config).to(device)
    text = model.config.text
    tokenizer = build_tokenizer(text.tokenizer, text.max_length)
    train_samples = load_split(config.data, "train", pct=config.pct)
    train_set = SegmentationDataset(train_samples, tokenizer, model.image_size, config.tokenizer_mode, augment=True,
                                    rotation_degrees=config.rotation_degrees,
                                    rotation_probability=config.rotation_probability, seed=config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, collate_fn=collate,
                              generator=generator, drop_last=False)
    val_loader = None
    if config.validate:
        val_samples = load_split(config.data, "val", pct=config.pct)
        val_set = SegmentationDataset(val_samples, tokenizer, model.image_size, config.tokenizer_mode)
        val_loader = DataLoader(val_set, batch_size=config.batch_size, collate_fn=collate)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.min_lr)
    start_epoch, best_dice, history = 0, -math.inf, []

    resume_path = out / "last.pt"
    if config.resume and resume_path.exists():
        state = torch.load(resume_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.T_max = config.epochs  # a resumed run may ask for more epochs than the first
        start_epoch, best_dice, history = state["epoch"], state["best_dice"], state["history"]
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["loader_rng"])
        train_set.rng.setstate(state["augment_rng"])

    steps_per_epoch = len(train_loader)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    total_steps = steps_per_epoch * config.epochs
    clock = ProgressClock(total_steps, already_done=steps_per_epoch * start_epoch)
    extra_metadata = dict(metadata or {})
    if config.init and getattr(model, "model_id", None):
        extra_metadata.setdefault("init_model_id", model.model_id)

    for epoch in range(start_epoch, config.epochs):
        model.train()
        started, totals, steps = time.perf_counter(), {}, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not config.progress, leave=False)
        for batch in bar:
            output = model(batch["pixel_values"].to(device), batch["input_ids"].to(device),
                           stochastic=config.stochastic)
            losses = segmentation_loss(
                output["logits"], batch["mask"].to(device), output["image_tokens"], output["text_embeds"],
                dice_weight=config.dice_weight, bce_weight=config.bce_weight,
                contrastive_weight=config.contrastive_weight, temperature=config.temperature,
            )
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach())
            steps += 1
            step_loss = float(losses["loss"].detach())
            bar.set_postfix(loss=f"{step_loss:.4f}")
            if on_progress is not None:
                done = epoch * steps_per_epoch + steps
                elapsed, eta = clock.times(done)
                on_progress(TrainProgress(step=done, total_steps=total_steps, epoch=epoch + 1, epochs=config.epochs,
                                          loss=step_loss, elapsed_seconds=elapsed, eta_seconds=eta))
            if should_stop is not None and should_stop():
                bar.close()
                raise TrainingCancelled(f"training stopped on request after step {steps} of epoch {epoch + 1}")
            if config.max_steps_per_epoch and steps >= config.max_steps_per_epoch:
                break
        scheduler.step()
        record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - started, 2),
                  "lr": scheduler.get_last_lr()[0], **{k: v / max(steps, 1) for k, v in totals.items()}}
        if val_loader is not None:
            record["val_dice"] = validation_dice(model, val_loader, device)
        history.append(record)
        score = record.get("val_dice", -record["loss"])
        saved = {"train_config": asdict(config), "epoch": epoch + 1, "history": history, **extra_metadata}
        if score > best_dice:
            best_dice = score
            save_pretrained(model, out / "best", metadata=saved)
        save_pretrained(model, out / "last", metadata=saved)
        # Written last and atomically: a crash leaves the previous resumable state intact.
        tmp = out / "last.pt.tmp"
        torch.save({"trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "best_dice": best_dice,
                    "history": history, "torch_rng": torch.get_rng_state(), "loader_rng": generator.get_state(),
                    "augment_rng": train_set.rng.getstate(), "config": asdict(config)}, tmp)
        tmp.replace(resume_path)
        if config.progress:
            print(json.dumps(record))
    return {"history": history, "best": str(out / "best"), "last": str(out / "last")}
