"""Stage 1: contrastive pre-training of the tiny image tower against the frozen MiniLM text tower.

The paper starts from a CLIP whose towers were aligned on image/caption pairs (UniMedCLIP). No
such model can be downloaded offline, so the `tiny` backbone aligns its own ViT on the training
split of a data set in the authors' layout (the phantoms, usually):

    loss = InfoNCE(image, caption)                      CLIP's symmetric loss, class tokens
         + dense_weight * BCE(patch . caption, patch foreground fraction)

The first term is CLIP's objective. The second aligns each patch token with its image's caption
in proportion to how much of the patch lies inside the targets, so that patch tokens, which the
mask head reads, carry location (the paper's backbone learnt this from millions of pairs; ours
has minutes). MiniLM stays frozen: captions are encoded once, and only the text projection, the
ViT and the logit scale learn. Stage 2 (`medclipseg.training.stage2`) then trains adapters and head with
both towers frozen.

Captions: the whole-image `caption` of `phantoms.json` when the data set has one, otherwise the
prompts of the image's rows. Masks: the union of the image's ground-truth masks.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from medclipseg.weights.checkpoint import save_pretrained
from medclipseg.datasets.torch_dataset import rotate_pair
from medclipseg.datasets.layout import load_split
from medclipseg.io.images import read_image
from medclipseg.io.masks import read_mask
from medclipseg.inference.transforms import preprocess_bgr
from medclipseg.training.config import PretrainConfig  # still importable from here
from medclipseg.training.stage2 import seed_everything


@dataclass
class PretrainImage:
    name: str
    image: np.ndarray  # uint8 [S, S, 3] BGR at the model's input size
    mask: np.ndarray  # uint8 [S, S] union of targets, 0/1
    captions: list


def load_pretrain_images(root, size: int, pct: int = 100) -> list:
    """The training split grouped by image: one entry per distinct image, its masks united.

    Rows of the same picture (one per selectable target) are grouped by the `image_id` of a
    `phantoms.json` manifest when there is one, otherwise by image file name."""
    samples = load_split(root, "train", pct=pct)
    from medclipseg.phantoms.writer import records_by_row

    by_row = records_by_row(root)
    grouped: dict = {}
    for sample in samples:
        record = by_row.get((sample.image_name, sample.mask_path.name), {})
        key = record.get("image_id", sample.image_name)
        entry = grouped.get(key)
        if entry is None:
            bgr = read_image(sample.image_path).bgr
            image = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)
            entry = PretrainImage(str(key), image, np.zeros((size, size), np.uint8), [])
            grouped[key] = entry
        mask = (read_mask(sample.mask_path) > 0).astype(np.uint8)
        entry.mask |= cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
        caption = record.get("caption") or sample.prompt
        if caption not in entry.captions:
            entry.captions.append(caption)
    return list(grouped.values())


@torch.no_grad()
def encode_captions(model, tokenizer, captions: list, batch_size: int = 64) -> torch.Tensor:
    """Pooled (pre-projection) MiniLM features of each caption: [N, hidden]."""
    text = model.text_model
    out = []
    for start in range(0, len(captions), batch_size):
        ids = tokenizer(captions[start:start + batch_size], mode="exact")
        x, state = text.embed(ids)
        for i in range(text.depth):
            x = text.run_layer(i, x, state)
        weights = (ids != text.pad_id).to(x.dtype).unsqueeze(-1)
        out.append((x * weights).sum(1) / weights.sum(1).clamp_min(1.0))
    return torch.cat(out)


def patch_fractions(masks: np.ndarray, grid: int) -> torch.Tensor:
    """uint8 [B, S, S] 0/1 -> fraction of foreground in each patch, [B, grid*grid]."""
    fractions = [cv2.resize(m.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA) for m in masks]
    return torch.from_numpy(np.stack(fractions).reshape(len(masks), -1))


def pretrain_losses(model, pixel_values, caption_features, caption_ids, patch_targets, dense_bias):
    """-> dict(loss, contrastive, dense). caption_ids mark equal captions (treated as positives)."""
    vision = model.vision_model
    x = vision.embed(pixel_values)
    for i in range(vision.depth):
        x = vision.run_layer(i, x)
    tokens = F.normalize(vision.project_tokens(x), dim=-1)
    text = F.normalize(model.text_model.proj(caption_features), dim=-1)
    scale = model.logit_scale.exp().clamp(max=100.0)

    logits = scale * tokens[:, 0] @ text.t()
    positives = (caption_ids[:, None] == caption_ids[None, :]).to(logits.dtype)
    targets = positives / positives.sum(1, keepdim=True)
    contrastive = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets.t()))

    patch_logits = scale * torch.einsum("bpd,bd->bp", tokens[:, 1:], text) + dense_bias
    dense = F.binary_cross_entropy_with_logits(patch_logits, patch_targets)
    return {"contrastive": contrastive, "dense": dense}


def pretrain(config: PretrainConfig) -> dict:
    from medclipseg.registry import build_tiny, default_device
    from medclipseg.inference.tokenization import build_tokenizer

    seed_everything(config.seed)
    device = torch.device(config.device) if config.device else default_device()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    model = build_tiny(pretrained_text=True, **config.model)
    size, grid = model.image_size, model.image_size // model.config.vision.patch_size
    tokenizer = build_tokenizer(model.config.text.tokenizer, model.config.text.max_length)
    images = load_pretrain_images(config.data, size, config.pct)
    if not images:
        raise ValueError(f"no training images in {config.data}")
    captions = sorted({c for entry in images for c in entry.captions})
    caption_index = {c: i for i, c in enumerate(captions)}
    caption_features = encode_captions(model, tokenizer, captions).to(device)

    # Stage 1 trains the image tower, the text projection and the temperature; MiniLM is frozen.
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(("vision_model.", "text_model.proj.", "logit_scale")))
    dense_bias = torch.nn.Parameter(torch.tensor(-2.0))
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad] + [dense_bias]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    rng = random.Random(config.seed)
    history, step, started = [], 0, time.perf_counter()
    bar = tqdm(total=total_steps, desc="pre-train", disable=not config.progress)
    model.train()
    while step < total_steps:
        order = list(range(len(images)))
        rng.shuffle(order)
        totals, count = {"loss": 0.0, "contrastive": 0.0, "dense": 0.0}, 0
        for start in range(0, len(order), config.batch_size):
            if step >= total_steps:
                break
            batch_images, batch_masks, ids = [], [], []
            for index in order[start:start + config.batch_size]:
                entry = images[index]
                image, mask = entry.image, entry.mask
                if rng.random() < config.rotation_probability:
                    image, mask = rotate_pair(image, mask, rng.uniform(-config.rotation_degrees,
                                                                       config.rotation_degrees))
                batch_images.append(image)
                batch_masks.append(mask)
                ids.append(caption_index[rng.choice(entry.captions)])
            ids = torch.tensor(ids, device=device)
            losses = pretrain_losses(model, torch.cat([preprocess_bgr(i, size) for i in batch_images]).to(device),
                                     caption_features[ids], ids, patch_fractions(np.stack(batch_masks), grid).to(device),
                                     dense_bias)
            loss = losses["contrastive"] + config.dense_weight * losses["dense"]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
            count += 1
            totals["loss"] += float(loss.detach())
            totals["contrastive"] += float(losses["contrastive"].detach())
            totals["dense"] += float(losses["dense"].detach())
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        record = {"epoch": len(history) + 1, "step": step, "seconds": round(time.perf_counter() - started, 1),
                  **{k: v / max(count, 1) for k, v in totals.items()}}
        history.append(record)
        if config.progress:
            print(json.dumps(record), flush=True)
    bar.close()
    model.eval()
    metadata = {"stage": "pretrain", "pretrain_config": asdict(config), "history": history,
                "images": len(images), "captions": len(captions)}
    save_pretrained(model, out, metadata=metadata)
    (out / "pretrain_history.json").write_text(json.dumps(history, indent=2) + "\n")
    return {"history": history, "out": str(out), "seconds": round(time.perf_counter() - started, 1)}
