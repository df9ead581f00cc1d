"""Tests for medclipseg.inference.acceleration: each accelerated precision against fp32 on the shipped
demo model, refusals in words, and the fp32 path left exactly as it was."""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch

from medclipseg.inference import acceleration
from medclipseg.inference.predictor import Predictor
from medclipseg.weights.sources import assets_dir

# Two shipped examples with their own prompts (assets/examples/examples.json).
EXAMPLES = [
    ("breast_ultrasound.png", "Breast ultrasound scan showing one medium oval-shaped benign lesion in the centre."),
    ("brain_mri.png", "Axial brain MRI showing one small lobulated meningioma on the left."),
]
# Every precision a CPU runs besides fp32 (fp16 is GPU-only), each checked against fp32 below.
CPU_ACCELERATED = [p for p in acceleration.PRECISIONS if p not in ("fp32", "fp16")]


@pytest.fixture(scope="module")
def demo_loaded():
    from medclipseg.registry import load_model

    return load_model("demo", device="cpu")


@pytest.fixture(scope="module")
def demo_fp32(demo_loaded):
    return Predictor.from_loaded(demo_loaded, device="cpu")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _examples():
    folder = assets_dir() / "examples"
    return [(cv2.imread(str(folder / name)), prompt) for name, prompt in EXAMPLES]


# -- agreement with fp32 --------------------------------------------------------------------------

@pytest.mark.parametrize("precision", CPU_ACCELERATED)
def test_accelerated_precision_agrees_with_fp32(demo_loaded, demo_fp32, precision):
    accelerated = Predictor.from_loaded(demo_loaded, device="cpu", precision=precision)
    for image, prompt in _examples():
        options = dict(num_samples=8, antithetic=True, seed=0, channel_order="bgr")
        reference = demo_fp32.predict(image, prompt, **options)
        fast = accelerated.predict(image, prompt, **options)
        assert reference.mask.sum() > 100  # a real foreground, so Dice means something
        assert _dice(fast.mask, reference.mask) >= 0.99, prompt
        assert _pearson(fast.entropy, reference.entropy) >= 0.95, prompt
        assert fast.probability.dtype == np.float32 and np.isfinite(fast.probability).all()


def test_cpu_bf16_model_is_a_converted_copy(small_tiny_model):
    before = {name: value.clone() for name, value in small_tiny_model.state_dict().items()}
    converted = acceleration.prepare_model(small_tiny_model, "bf16", "cpu")
    assert converted is not small_tiny_model
    # The caller's model is untouched: same modules, float32 weights, same values.
    assert not any(isinstance(m, acceleration.BFloat16Island) for m in small_tiny_model.modules())
    after = small_tiny_model.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    # The copy: tower matrix products in bfloat16; streams' norms and the adapters in float32.
    dtypes = {name: p.dtype for name, p in converted.named_parameters()}
    assert any(d == torch.bfloat16 for n, d in dtypes.items() if n.startswith("vision_model.transformer"))
    assert any(d == torch.bfloat16 for n, d in dtypes.items() if n.startswith("text_model.transformer.encoder"))
    assert all(d == torch.float32 for n, d in dtypes.items() if n.startswith("pvl_adapters") or ".ln_" in n)
    # The sampling interface the predictor uses is kept.
    pixels = torch.rand(1, 3, small_tiny_model.image_size, small_tiny_model.image_size)
    input_ids = torch.tensor([[101, 2023, 2003, 102]])
    with torch.inference_mode():
        chunks = list(converted.iter_sample_chunks(pixels, input_ids, 4, 2, True, torch.Generator().manual_seed(0),
                                                   True))
        samples = converted.forward_samples(pixels, input_ids, 4, generator=torch.Generator().manual_seed(0))
        single = converted(pixels, input_ids, stochastic=False)["logits"]
    size = small_tiny_model.image_size
    assert [c.shape for c in chunks] == [(2, 1, size, size)] * 2 and chunks[0].dtype == torch.float32
    assert samples.shape == (4, 1, size, size) and single.shape == (1, size, size)


# -- refusals -------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["int4", "float8", "tf32"])
def test_unknown_precision_refused_in_words(small_tiny_model, minilm_tokenizer, precision):
    with pytest.raises(ValueError, match=rf"Unknown precision '{precision}'; use one of fp32, bf16"):
        Predictor(small_tiny_model, minilm_tokenizer, device="cpu", precision=precision)


def test_fp16_refused_on_cpu(small_tiny_model, minilm_tokenizer):
    with pytest.raises(ValueError, match="fp16 runs on a GPU only"):
        Predictor(small_tiny_model, minilm_tokenizer, device="cpu", precision="fp16")


def test_precision_names_are_case_insensitive():
    assert acceleration.check_precision("BF16", "cpu") == "bf16"
    assert acceleration.check_precision(None, "cpu") == "fp32"


# -- fp32 unchanged, GPU precisions are autocast --------------------------------------------------

def test_fp32_is_bit_identical_to_a_predictor_without_precision(demo_loaded, demo_fp32):
    explicit = Predictor.from_loaded(demo_loaded, device="cpu", precision="fp32")
    assert explicit.model is demo_loaded.model  # no copy, no conversion
    image, prompt = _examples()[0]
    for options in (dict(num_samples=4, seed=3), dict(num_samples=8, antithetic=True, adaptive=True, seed=3)):
        a = demo_fp32.predict(image, prompt, channel_order="bgr", **options)
        b = explicit.predict(image, prompt, channel_order="bgr", **options)
        for name in ("probability", "entropy", "mutual_information", "mask"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_gpu_precisions_keep_the_module_and_autocast(small_tiny_model):
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        assert acceleration.prepare_model(small_tiny_model, precision, "cuda") is small_tiny_model
        with warnings.catch_warnings():  # without a GPU torch warns that it disables the context
            warnings.simplefilter("ignore")
            context = acceleration.autocast("cuda", precision)
        assert isinstance(context, torch.autocast) and context.fast_dtype == dtype
    assert not isinstance(acceleration.autocast("cpu", "bf16"), torch.autocast)
    assert not isinstance(acceleration.autocast("cuda", "fp32"), torch.autocast)



def test_auto_is_bf16_only_on_a_cpu_with_bfloat16_hardware(monkeypatch):
    from medclipseg.inference import acceleration

    monkeypatch.setattr(acceleration, "cpu_has_fast_bf16", lambda: True)
    assert acceleration.check_precision("auto", "cpu") == "bf16"
    assert acceleration.check_precision("AUTO", "cuda") == "fp32"  # not measured on a GPU yet
    monkeypatch.setattr(acceleration, "cpu_has_fast_bf16", lambda: False)
    assert acceleration.check_precision("auto", "cpu") == "fp32"


def test_the_precision_setting_is_checked_in_words(monkeypatch):
    from medclipseg import settings

    monkeypatch.delenv("MEDCLIPSEG_PRECISION", raising=False)
    assert settings.precision() == "auto"
    monkeypatch.setenv("MEDCLIPSEG_PRECISION", "BF16")
    assert settings.precision() == "bf16"
    monkeypatch.setenv("MEDCLIPSEG_PRECISION", "int4")
    with pytest.raises(ValueError, match="MEDCLIPSEG_PRECISION='int4' is not a precision; use one of auto, fp32"):
        settings.precision()
