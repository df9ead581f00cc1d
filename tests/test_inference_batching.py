"""Tests for Predictor.predict_batch and medclipseg.inference.batching: several (image, prompt) pairs
in one forward pass give what each gives alone."""
from __future__ import annotations

import numpy as np
import pytest

from medclipseg.io.images import ImageReadError
from medclipseg.io.prompts import PromptError
from medclipseg.inference.batching import group_by_length, inputs_per_pass
from medclipseg.inference.predictor import Predictor

PROMPTS = ["a round polyp in the lower left", "two small lesions", "a large irregular tumour at the top right",
           "a cyst"]
# Larger batches change the blocking of CPU matrix products, not the arithmetic: logits move by
# about 1e-5, probabilities by less.
ROUNDING = 1e-4


def _images(count, size=(41, 57)):
    rng = np.random.default_rng(3)
    return [(rng.random((*size, 3)) * 255).astype(np.uint8) for _ in range(count)]


@pytest.fixture()
def batch_predictor(small_tiny_model, minilm_tokenizer):
    # 4 samples per chunk and 8 rows per pass: two inputs share each pass.
    return Predictor(small_tiny_model, minilm_tokenizer, mode="exact", device="cpu", chunk_size=4, rows_per_pass=8)


def _close(a, b):
    assert a.image_shape == b.image_shape
    for name in ("probability", "entropy", "mutual_information"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=ROUNDING, rtol=0)


def test_each_item_equals_its_own_predict_call(batch_predictor):
    images = _images(4)
    items = list(zip(images, PROMPTS))
    batch = batch_predictor.predict_batch(items, num_samples=8, seed=[5, 6, 7, 8])
    assert len(batch) == 4
    for (image, prompt), seed, got in zip(items, [5, 6, 7, 8], batch):
        alone = batch_predictor.predict(image, prompt, num_samples=8, seed=seed)
        _close(got, alone)
        assert got.prompt == alone.prompt and got.num_samples == 8
        assert got.probability.shape == image.shape[:2]
        np.testing.assert_array_equal(got.mask, got.probability > 0.5)
        assert got.scores.keys() == alone.scores.keys()


def test_an_item_does_not_depend_on_its_neighbours(batch_predictor):
    images = _images(3)
    first = batch_predictor.predict_batch(list(zip(images, PROMPTS)), num_samples=6, seed=11)
    reordered = batch_predictor.predict_batch([(images[2], PROMPTS[2]), (images[0], PROMPTS[0])], num_samples=6,
                                              seed=11)
    _close(first[0], reordered[1])
    _close(first[2], reordered[0])


def test_one_seed_for_all_is_each_items_seed(batch_predictor):
    images = _images(2)
    together = batch_predictor.predict_batch(list(zip(images, PROMPTS)), num_samples=4, seed=0)
    alone = batch_predictor.predict(images[1], PROMPTS[1], num_samples=4, seed=0)
    _close(together[1], alone)


def test_antithetic_pairs_per_item(batch_predictor):
    images = _images(3)
    batch = batch_predictor.predict_batch(list(zip(images, PROMPTS)), num_samples=7, seed=[1, 2, 3],
                                          antithetic=True)
    for image, prompt, seed, got in zip(images, PROMPTS, [1, 2, 3], batch):
        alone = batch_predictor.predict(image, prompt, num_samples=7, seed=seed, antithetic=True)
        assert got.num_samples == alone.num_samples == 8  # rounded up to pairs
        _close(got, alone)


def test_unseeded_batches_still_sample(batch_predictor):
    images = _images(2)
    one = batch_predictor.predict_batch(list(zip(images, PROMPTS)), num_samples=4)
    two = batch_predictor.predict_batch(list(zip(images, PROMPTS)), num_samples=4)
    assert not np.array_equal(one[0].probability, two[0].probability)


def test_fast_mode_groups_prompts_by_length(small_tiny_model, minilm_tokenizer):
    predictor = Predictor(small_tiny_model, minilm_tokenizer, mode="fast", device="cpu", chunk_size=4,
                          rows_per_pass=16)
    images = _images(4)
    # Different token counts: padding a prompt to another's length would change its result.
    batch = predictor.predict_batch(list(zip(images, PROMPTS)), num_samples=4, seed=2)
    for image, prompt, got in zip(images, PROMPTS, batch):
        _close(got, predictor.predict(image, prompt, num_samples=4, seed=2))


def test_group_by_length_and_inputs_per_pass():
    import torch

    ids = [torch.zeros(1, n) for n in (5, 7, 5, 9, 7)]
    assert group_by_length(ids) == [[0, 2], [1, 4], [3]]
    assert inputs_per_pass(16, 4) == 4
    assert inputs_per_pass(16, 30) == 1


class _CountingModel:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def iter_sample_chunks(self, *args, **kwargs):
        self.calls += 1
        return self.model.iter_sample_chunks(*args, **kwargs)


def test_passes_hold_rows_per_pass(batch_predictor):
    counting = _CountingModel(batch_predictor.model)
    batch_predictor.model = counting
    try:
        batch_predictor.predict_batch(list(zip(_images(4), PROMPTS)), num_samples=4, seed=0)
    finally:
        batch_predictor.model = counting.model
    assert counting.calls == 2  # 4 inputs x 4 samples in passes of 8 rows


def test_bad_inputs_are_refused_before_the_model_runs(batch_predictor):
    counting = _CountingModel(batch_predictor.model)
    batch_predictor.model = counting
    images = _images(2)
    try:
        with pytest.raises(PromptError):
            batch_predictor.predict_batch([(images[0], PROMPTS[0]), (images[1], "   ")])
        with pytest.raises(ImageReadError):
            batch_predictor.predict_batch([(images[0], PROMPTS[0]), (b"not an image", PROMPTS[1])])
        with pytest.raises(ValueError, match="2 seeds for 3 items"):
            batch_predictor.predict_batch(list(zip(_images(3), PROMPTS)), seed=[1, 2])
        with pytest.raises(ValueError, match="threshold"):
            batch_predictor.predict_batch([(images[0], PROMPTS[0])], threshold=1.5)
    finally:
        batch_predictor.model = counting.model
    assert counting.calls == 0


def test_empty_batch_and_bad_rows_per_pass(batch_predictor, small_tiny_model, minilm_tokenizer):
    assert batch_predictor.predict_batch([]) == []
    with pytest.raises(ValueError, match="rows_per_pass"):
        Predictor(small_tiny_model, minilm_tokenizer, device="cpu", rows_per_pass=0)
