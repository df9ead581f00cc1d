"""Training losses for MedCLIPSeg.

The segmentation objective is a weighted sum of a soft Dice loss, a binary
cross-entropy loss and a soft patch-level image/text contrastive loss.

Note on Dice: the authors' implementation reduced over the wrong axis (it
treated the image height as a channel dimension). We instead compute a proper
per-image soft Dice over all pixels and average ``1 - dice`` over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "soft_dice_loss",
    "bce_with_logits_loss",
    "soft_patch_contrastive_loss",
    "segmentation_loss",
]


def _check_same_shape(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.shape != target.shape:
        raise ValueError(
            f"logits and target must have the same shape, got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if logits.dim() != 3:
        raise ValueError(f"expected [B, H, W] tensors, got shape {tuple(logits.shape)}")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-image soft Dice loss.

    ``p = sigmoid(logits)``; for each image
    ``dice = (2 * sum(p * t) + eps) / (sum(p) + sum(t) + eps)`` and the loss is
    the batch mean of ``1 - dice``.

    ``eps`` defaults to 1.0 (additive "Laplace" smoothing on both numerator and
    denominator): it keeps the loss defined for empty masks (an empty target
    predicted as empty gives dice -> 1) and is negligible relative to the pixel
    counts of typical masks, so it barely biases the gradient for non-empty ones.

    Args:
        logits: ``[B, H, W]`` raw scores.
        target: ``[B, H, W]`` float tensor of 0/1 values.
    """
    _check_same_shape(logits, target)
    probs = torch.sigmoid(logits)
    target = target.to(probs.dtype)
    intersection = (probs * target).flatten(1).sum(dim=1)
    denominator = probs.flatten(1).sum(dim=1) + target.flatten(1).sum(dim=1)
    dice = (2.0 * intersection + eps) / (denominator + eps)
    return (1.0 - dice).mean()


def bce_with_logits_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy computed from logits (numerically stable)."""
    _check_same_shape(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="mean")


def _soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_j target[i, j] * log_softmax(logits)[i, j]``."""
    return -(soft_targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _text_soft_targets(text_embeds: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-softmax of the row-L2-normalised text similarity ``txt @ txt^T / T``."""
    text_similarity = text_embeds @ text_embeds.t() / temperature
    text_similarity = text_similarity / text_similarity.norm(dim=1, keepdim=True)
    return F.softmax(text_similarity, dim=1)


def soft_patch_contrastive_loss(
    image_tokens: torch.Tensor, text_embeds: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """Soft image/text contrastive loss on mean-pooled patch tokens.

    Args:
        image_tokens: ``[B, 1 + P, D]`` projected image tokens, class token first.
            The class token is ignored; each patch token is L2-normalised and the
            patches are averaged (the mean is deliberately not renormalised).
        text_embeds: ``[B, D]`` text embeddings, used as given (not normalised).
        temperature: softmax temperature for both logits and soft targets.

    Soft targets come from text/text similarity: ``S = txt @ txt^T / T``, each
    row divided by its L2 norm, then a row-wise softmax. The loss is the mean of
    the soft cross-entropies of image->text logits (targets ``S``) and
    text->image logits (targets ``S^T``).
    """
    if image_tokens.dim() != 3 or image_tokens.shape[1] < 2:
        raise ValueError(
            f"image_tokens must be [B, 1+P, D] with P >= 1, got {tuple(image_tokens.shape)}"
        )
    if text_embeds.dim() != 2:
        raise ValueError(f"text_embeds must be [B, D], got {tuple(text_embeds.shape)}")
    if image_tokens.shape[0] != text_embeds.shape[0] or image_tokens.shape[2] != text_embeds.shape[1]:
        raise ValueError(
            f"batch/feature size mismatch: image_tokens {tuple(image_tokens.shape)} vs "
            f"text_embeds {tuple(text_embeds.shape)}"
        )

    patch_tokens = F.normalize(image_tokens[:, 1:, :], dim=-1)
    image_embeds = patch_tokens.mean(dim=1)
    text_embeds = text_embeds.to(image_embeds.dtype)

    logits_image_to_text = image_embeds @ text_embeds.t() / temperature
    logits_text_to_image = logits_image_to_text.t()

    soft_targets = _text_soft_targets(text_embeds, temperature)

    loss_image_to_text = _soft_cross_entropy(logits_image_to_text, soft_targets)
    loss_text_to_image = _soft_cross_entropy(logits_text_to_image, soft_targets.t())
    return 0.5 * (loss_image_to_text + loss_text_to_image)


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    image_tokens: torch.Tensor,
    text_embeds: torch.Tensor,
    dice_weight: float = 0.5,
    bce_weight: float = 0.5,
    contrastive_weight: float = 0.1,
    temperature: float = 0.2,
) -> dict[str, torch.Tensor]:
    """Total training loss and its components.

    Returns ``{"loss", "dice", "bce", "contrastive"}`` where
    ``loss = dice_weight * dice + bce_weight * bce + contrastive_weight * contrastive``.
    """
    dice = soft_dice_loss(logits, target)
    bce = bce_with_logits_loss(logits, target)
    contrastive = soft_patch_contrastive_loss(image_tokens, text_embeds, temperature=temperature)
    total = dice_weight * dice + bce_weight * bce + contrastive_weight * contrastive
    return {"loss": total, "dice": dice, "bce": bce, "contrastive": contrastive}
