"""Tests for medclipseg.training.losses against independent numpy / hand-computed references."""

import math

import numpy as np
import pytest
import torch

from medclipseg.training.losses import (
    _text_soft_targets,
    bce_with_logits_loss,
    segmentation_loss,
    soft_dice_loss,
    soft_patch_contrastive_loss,
)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _log_softmax_rows(x):
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _reference_dice_loss(logits, target, eps=1.0):
    losses = []
    for b in range(logits.shape[0]):
        inter = probs_sum = target_sum = 0.0
        for i in range(logits.shape[1]):
            for j in range(logits.shape[2]):
                p = _sigmoid(logits[b, i, j])
                inter += p * target[b, i, j]
                probs_sum += p
                target_sum += target[b, i, j]
        losses.append(1.0 - (2.0 * inter + eps) / (probs_sum + target_sum + eps))
    return float(np.mean(losses))


def _reference_contrastive(image_tokens, text_embeds, temperature):
    batch, _, _ = image_tokens.shape
    image = np.zeros((batch, image_tokens.shape[2]))
    for b in range(batch):
        patches = image_tokens[b, 1:]
        for patch in patches:
            image[b] += patch / np.linalg.norm(patch)
        image[b] /= len(patches)
    logits_i2t = image @ text_embeds.T / temperature
    logits_t2i = logits_i2t.T
    sim = text_embeds @ text_embeds.T / temperature
    sim = sim / np.linalg.norm(sim, axis=1, keepdims=True)
    targets = np.exp(sim) / np.exp(sim).sum(axis=1, keepdims=True)

    def soft_ce(logits, tgt):
        log_probs = _log_softmax_rows(logits)
        rows = [-sum(tgt[i, j] * log_probs[i, j] for j in range(tgt.shape[1])) for i in range(tgt.shape[0])]
        return np.mean(rows)

    return 0.5 * (soft_ce(logits_i2t, targets) + soft_ce(logits_t2i, targets.T))


def _random_tokens(seed, batch=3, patches=4, dim=5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, 1 + patches, dim)), rng.normal(size=(batch, dim))


# --------------------------------------------------------------------- Dice


def test_soft_dice_hand_computed():
    # p = 0.5 everywhere, target all ones on 2x2: dice = (2*2 + 1) / (2 + 4 + 1) = 5/7.
    logits = torch.zeros(1, 2, 2, dtype=torch.float64)
    target = torch.ones(1, 2, 2, dtype=torch.float64)
    assert soft_dice_loss(logits, target).item() == pytest.approx(2.0 / 7.0)
    # eps = 0: dice = 4 / 6.
    assert soft_dice_loss(logits, target, eps=0.0).item() == pytest.approx(1.0 / 3.0)


def test_soft_dice_is_per_image_mean():
    # Image 0: empty target, p ~ 0 -> dice ~ 1. Image 1: full target, p ~ 0 -> dice = 1/(16+1).
    logits = torch.full((2, 4, 4), -50.0, dtype=torch.float64)
    target = torch.zeros(2, 4, 4, dtype=torch.float64)
    target[1] = 1.0
    expected = 0.5 * ((1.0 - 1.0) + (1.0 - 1.0 / 17.0))
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected, abs=1e-12)


def test_soft_dice_matches_loop_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(3, 4, 5))
    target = (rng.random((3, 4, 5)) > 0.5).astype(np.float64)
    got = soft_dice_loss(torch.from_numpy(logits), torch.from_numpy(target)).item()
    assert got == pytest.approx(_reference_dice_loss(logits, target), rel=1e-12)
    got_eps = soft_dice_loss(torch.from_numpy(logits), torch.from_numpy(target), eps=0.1).item()
    assert got_eps == pytest.approx(_reference_dice_loss(logits, target, eps=0.1), rel=1e-12)


def test_soft_dice_perfect_prediction_near_zero():
    target = torch.zeros(2, 3, 3, dtype=torch.float64)
    target[:, 1, 1] = 1.0
    logits = (target * 2 - 1) * 100.0
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-12)


def test_soft_dice_gradcheck():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(2, 3, 3)), requires_grad=True)
    target = torch.tensor((rng.random((2, 3, 3)) > 0.5).astype(np.float64))
    assert torch.autograd.gradcheck(lambda x: soft_dice_loss(x, target), (logits,))


# ---------------------------------------------------------------------- BCE


def test_bce_matches_numpy_formula():
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=3.0, size=(2, 3, 4))
    target = (rng.random((2, 3, 4)) > 0.5).astype(np.float64)
    p = _sigmoid(logits)
    expected = np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p)))
    got = bce_with_logits_loss(torch.from_numpy(logits), torch.from_numpy(target)).item()
    assert got == pytest.approx(expected, rel=1e-10)


def test_bce_hand_value():
    # Zero logits: BCE = log 2 regardless of the target.
    logits = torch.zeros(1, 2, 2)
    target = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert bce_with_logits_loss(logits, target).item() == pytest.approx(math.log(2.0), rel=1e-6)


@pytest.mark.parametrize("loss_fn", [soft_dice_loss, bce_with_logits_loss])
def test_pixel_losses_reject_shape_mismatch(loss_fn):
    with pytest.raises(ValueError):
        loss_fn(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError):
        loss_fn(torch.zeros(4, 4), torch.zeros(4, 4))


# -------------------------------------------------------------- contrastive


def test_soft_targets_2x2_by_hand():
    # txt = [[1,0],[1,1]], T = 0.2: txt txt^T / T = [[5,5],[5,10]].
    # Row norms sqrt(50), sqrt(125) -> rows [1/sqrt2, 1/sqrt2] and [1/sqrt5, 2/sqrt5].
    txt = np.array([[1.0, 0.0], [1.0, 1.0]])
    sim = txt @ txt.T / 0.2
    np.testing.assert_allclose(sim, [[5.0, 5.0], [5.0, 10.0]])
    row0 = np.array([5.0, 5.0]) / math.sqrt(50.0)
    row1 = np.array([5.0, 10.0]) / math.sqrt(125.0)
    np.testing.assert_allclose(row0, [1 / math.sqrt(2), 1 / math.sqrt(2)])
    np.testing.assert_allclose(row1, [1 / math.sqrt(5), 2 / math.sqrt(5)])
    a = 1.0 / (1.0 + math.exp(1.0 / math.sqrt(5.0)))  # softmax of row1, first entry
    expected = np.array([[0.5, 0.5], [a, 1.0 - a]])
    got = _text_soft_targets(torch.tensor(txt), 0.2).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_contrastive_2x2_by_hand():
    # One patch per image -> mean of normalised patches = the unit patch itself.
    # img = [[1,0],[0,1]], txt = [[1,0],[1,1]] -> i2t logits [[5,5],[0,5]], t2i [[5,0],[5,5]].
    image_tokens = torch.tensor(
        [[[7.0, -3.0], [3.0, 0.0]], [[-1.0, 2.0], [0.0, 0.5]]], dtype=torch.float64
    )
    txt = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    a = 1.0 / (1.0 + math.exp(1.0 / math.sqrt(5.0)))
    b = 1.0 - a
    log2 = math.log(2.0)
    softplus_m5 = math.log1p(math.exp(-5.0))  # -log_softmax of the larger entry of [0, 5]
    # i2t targets rows [.5,.5], [a,b]; t2i targets (S^T) rows [.5,a], [.5,b].
    i2t = 0.5 * (log2 + (a * (5.0 + softplus_m5) + b * softplus_m5))
    t2i = 0.5 * ((0.5 * softplus_m5 + a * (5.0 + softplus_m5)) + (0.5 + b) * log2)
    expected = 0.5 * (i2t + t2i)
    got = soft_patch_contrastive_loss(image_tokens, txt, temperature=0.2).item()
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("temperature", [0.05, 0.2, 1.0])
def test_contrastive_matches_loop_reference(temperature):
    image_tokens, text = _random_tokens(3)
    got = soft_patch_contrastive_loss(
        torch.from_numpy(image_tokens), torch.from_numpy(text), temperature=temperature
    ).item()
    expected = _reference_contrastive(image_tokens, text, temperature)
    assert got == pytest.approx(expected, rel=1e-10)


def test_contrastive_ignores_class_token():
    image_tokens, text = _random_tokens(4)
    changed = image_tokens.copy()
    changed[:, 0] = np.random.default_rng(99).normal(scale=10.0, size=changed[:, 0].shape)
    base = soft_patch_contrastive_loss(torch.from_numpy(image_tokens), torch.from_numpy(text))
    other = soft_patch_contrastive_loss(torch.from_numpy(changed), torch.from_numpy(text))
    assert other.item() == pytest.approx(base.item(), rel=1e-12)


def test_contrastive_invariant_to_patch_scale_and_order():
    image_tokens, text = _random_tokens(5)
    scales = np.array([0.3, 2.0, 7.0, 0.01])[None, :, None]
    changed = image_tokens.copy()
    changed[:, 1:] = changed[:, 1:][:, ::-1] * scales
    base = soft_patch_contrastive_loss(torch.from_numpy(image_tokens), torch.from_numpy(text))
    other = soft_patch_contrastive_loss(torch.from_numpy(changed), torch.from_numpy(text))
    assert other.item() == pytest.approx(base.item(), rel=1e-12)


def test_contrastive_invariant_to_batch_permutation():
    image_tokens, text = _random_tokens(6, batch=4)
    perm = np.array([2, 0, 3, 1])
    base = soft_patch_contrastive_loss(torch.from_numpy(image_tokens), torch.from_numpy(text))
    other = soft_patch_contrastive_loss(
        torch.from_numpy(image_tokens[perm]), torch.from_numpy(text[perm])
    )
    assert other.item() == pytest.approx(base.item(), rel=1e-12)


def test_contrastive_temperature_effect():
    image_tokens, text = _random_tokens(7)
    img_t, txt_t = torch.from_numpy(image_tokens), torch.from_numpy(text)
    # Soft targets do not depend on T (row normalisation cancels it) ...
    np.testing.assert_allclose(
        _text_soft_targets(txt_t, 0.05).numpy(), _text_soft_targets(txt_t, 1.0).numpy(), rtol=1e-12
    )
    # ... so scaling text by c and T by c leaves the loss unchanged,
    scaled = soft_patch_contrastive_loss(img_t, txt_t * 3.0, temperature=0.6).item()
    assert scaled == pytest.approx(soft_patch_contrastive_loss(img_t, txt_t, 0.2).item(), rel=1e-12)
    # while changing T alone changes the loss.
    assert soft_patch_contrastive_loss(img_t, txt_t, 0.1).item() != pytest.approx(
        soft_patch_contrastive_loss(img_t, txt_t, 0.2).item(), rel=1e-3
    )


def test_contrastive_rejects_bad_shapes():
    with pytest.raises(ValueError):
        soft_patch_contrastive_loss(torch.zeros(2, 3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError):
        soft_patch_contrastive_loss(torch.zeros(2, 3, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError):
        soft_patch_contrastive_loss(torch.zeros(2, 1, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        soft_patch_contrastive_loss(torch.zeros(3, 4), torch.zeros(3, 4))


# ------------------------------------------------------------------- total


def _segmentation_inputs(seed=8):
    rng = np.random.default_rng(seed)
    logits = torch.tensor(rng.normal(size=(3, 4, 4)), requires_grad=True)
    target = torch.tensor((rng.random((3, 4, 4)) > 0.5).astype(np.float64))
    image_tokens = torch.tensor(rng.normal(size=(3, 5, 6)), requires_grad=True)
    text = torch.tensor(rng.normal(size=(3, 6)), requires_grad=True)
    return logits, target, image_tokens, text


def test_segmentation_loss_default_weights():
    logits, target, image_tokens, text = _segmentation_inputs()
    out = segmentation_loss(logits, target, image_tokens, text)
    assert set(out) == {"loss", "dice", "bce", "contrastive"}
    dice = _reference_dice_loss(logits.detach().numpy(), target.numpy())
    contrastive = _reference_contrastive(image_tokens.detach().numpy(), text.detach().numpy(), 0.2)
    assert out["dice"].item() == pytest.approx(dice, rel=1e-10)
    assert out["contrastive"].item() == pytest.approx(contrastive, rel=1e-10)
    expected = 0.5 * dice + 0.5 * out["bce"].item() + 0.1 * contrastive
    assert out["loss"].item() == pytest.approx(expected, rel=1e-10)


def test_segmentation_loss_custom_weights_and_temperature():
    logits, target, image_tokens, text = _segmentation_inputs(9)
    out = segmentation_loss(
        logits, target, image_tokens, text,
        dice_weight=1.0, bce_weight=0.0, contrastive_weight=2.0, temperature=0.5,
    )
    contrastive = _reference_contrastive(image_tokens.detach().numpy(), text.detach().numpy(), 0.5)
    assert out["contrastive"].item() == pytest.approx(contrastive, rel=1e-10)
    assert out["loss"].item() == pytest.approx(out["dice"].item() + 2.0 * contrastive, rel=1e-10)


def test_segmentation_loss_gradients_flow():
    logits, target, image_tokens, text = _segmentation_inputs(10)
    segmentation_loss(logits, target, image_tokens, text)["loss"].backward()
    for grad in (logits.grad, image_tokens.grad[:, 1:], text.grad):
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0
    # The class token does not take part in the loss.
    assert torch.all(image_tokens.grad[:, 0] == 0)
