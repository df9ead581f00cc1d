"""Predictor: the one place that turns (image, prompt) into masks and uncertainty maps.

Shared by the CLI and the app. It owns pre-processing, Monte-Carlo sampling and
post-processing to the input image's resolution.

Pre-processing modes
- exact: the authors' pipeline. Image in BGR order (as OpenCV reads it, never converted),
  bilinear resize to 224x224, scaled to [0, 1], ImageNet mean/std per channel index; prompt
  padded with 0 to the tower's fixed length (256 for BiomedBERT).
- fast: the same image pipeline; the prompt is not padded (padding tokens take part in the
  adapters, so logits differ slightly from exact mode, by up to a few hundredths).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from medclipseg.io.images import LoadedImage, read_image, validate_prompt
from medclipseg.inference.tokenization import MODES, PromptTokenizer, build_tokenizer
from medclipseg.inference.uncertainty import MonteCarloAccumulator, image_scores

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_WEIGHTS_ENV = "MEDCLIPSEG_WEIGHTS"
DEMO_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo-tiny"
# Boundary band half-width, in pixels of the model's 224 grid, scaled to the image size.
BOUNDARY_BAND_224 = 3


@dataclass
class Prediction:
    """Maps are float32 [H, W] at the input resolution; mask is bool [H, W]."""

    probability: np.ndarray
    mask: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    scores: dict
    num_samples: int
    threshold: float
    prompt: str
    model_id: str
    seconds: float
    image_shape: tuple
    conversions: list = field(default_factory=list)
    prompt_truncated: bool = False

    def with_threshold(self, threshold: float) -> "Prediction":
        """Re-threshold from the cached maps, without running the model again."""
        from dataclasses import replace

        if not 0.0 < threshold < 1.0:
            raise ValueError("threshold must lie strictly between 0 and 1")
        mask = self.probability > threshold
        scores = image_scores(self.entropy, self.mutual_information, mask, self.scores["boundary_band_px"])
        return replace(self, mask=mask, threshold=threshold, scores=scores)


def preprocess_bgr(bgr: np.ndarray, size: int = 224) -> torch.Tensor:
    """uint8 HxWx3 (BGR, kept as is) -> normalised float tensor [1, 3, size, size]."""
    import cv2

    resized = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_LINEAR)
    scaled = resized.astype(np.float32) / 255.0
    normalised = (scaled - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1))).unsqueeze(0)


def resize_map(values: np.ndarray, shape: tuple) -> np.ndarray:
    import cv2

    height, width = shape
    if values.shape == (height, width):
        return values
    return cv2.resize(values, (width, height), interpolation=cv2.INTER_LINEAR)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    def __init__(
        self,
        model,
        tokenizer: PromptTokenizer,
        mode: str = "exact",
        device=None,
        chunk_size: Optional[int] = None,
        model_id: str = "",
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.mode = mode
        # Samples per forward pass. Small models run all 30 samples in one batch (fewer, larger
        # matrix products: 0.43 s instead of 0.52 s for the demo); large ones stay memory-bounded.
        self.chunk_size = chunk_size or (32 if model.vision_model.width <= 256 else 8)
        self.model_id = model_id or getattr(model, "source", "") or model.config.backbone
        self.image_size = model.image_size

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        source: Optional[str] = None,
        mode: str = "exact",
        device=None,
        tokenizer_source: Optional[str] = None,
        trust_pickle: bool = False,
        **kwargs,
    ) -> "Predictor":
        """source: "demo" (shipped weights), a model folder of ours, an authors' `.pth`, or an
        `hf://` address of either; None reads MEDCLIPSEG_WEIGHTS and falls back to "demo".
        tokenizer_source overrides where the tokenizer comes from (a vocab.txt or
        tokenizer.json path, or an hf:// / package:// address)."""
        from medclipseg.weights.checkpoint import CONFIG_FILE, load_pretrained
        from medclipseg.weights.official import load_official_model, official_tokenizer_source
        from medclipseg.weights.sources import resolve_file

        source = source or os.environ.get(DEFAULT_WEIGHTS_ENV) or "demo"
        if source == "demo":
            if not (DEMO_WEIGHTS_DIR / CONFIG_FILE).exists():
                raise FileNotFoundError(f"demo weights not found in {DEMO_WEIGHTS_DIR}")
            path = DEMO_WEIGHTS_DIR
        elif str(source).startswith("hf://") and not str(source).endswith((".pth", ".pt")):
            # An hf:// folder of ours: fetch its config and weights.
            config_path = resolve_file(str(source).rstrip("/") + "/" + CONFIG_FILE)
            resolve_file(str(source).rstrip("/") + "/model.safetensors")
            path = config_path.parent
        else:
            path = resolve_file(source)
        if path.is_dir():
            model = load_pretrained(path)
            text = model.config.text
            tokenizer = build_tokenizer(tokenizer_source or text.tokenizer, text.max_length)
        else:
            model = load_official_model(path, trust_pickle=trust_pickle)
            tokenizer = build_tokenizer(tokenizer_source or official_tokenizer_source(), 256)
        model_id = str(source)
        if source == "demo":
            # Name the exact weights, so that saved corrections say which demo produced them.
            from medclipseg.weights.ship import sha256_of

            model_id = f"demo-tiny@{sha256_of(path / 'model.safetensors')[:12]}"
        return cls(model, tokenizer, mode=mode, device=device, model_id=model_id, **kwargs)

    # -- pre-processing ---------------------------------------------------------------------------
    def load_image(self, image, channel_order: str = "rgb") -> LoadedImage:
        """Paths and bytes are decoded as OpenCV does (BGR). Arrays are taken as `channel_order`
        ("rgb", the PIL/Gradio convention, or "bgr")."""
        if isinstance(image, LoadedImage):
            return image
        if isinstance(image, np.ndarray):
            return read_image(image, channel_order=channel_order)
        return read_image(image)

    def tokenize(self, prompt: str):
        prompt = validate_prompt(prompt)
        input_ids, truncated = self.tokenizer.encode([prompt], mode=self.mode)
        return prompt, input_ids, truncated[0]

    # -- inference --------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(
        self,
        image,
        prompt: str,
        num_samples: int = 30,
        threshold: float = 0.5,
        seed: Optional[int] = None,
        adaptive: bool = False,
        min_samples: int = 8,
        entropy_tolerance: float = 1e-3,
        mask_tolerance: float = 1e-2,
        channel_order: str = "rgb",
        antithetic: bool = False,
    ) -> Prediction:
        """Monte-Carlo prediction.

        adaptive=True: sampling stops early (after at least min_samples) once a chunk changes
        the entropy map by less than entropy_tolerance nats on average and the mask by less than
        mask_tolerance in Dice (1 - Dice of the masks before and after the chunk).
        antithetic=True: samples come in pairs (eps, -eps), which cancels most of the sampling
        error of the mean (sample counts are rounded up to even numbers).
        """
        if not 0.0 < threshold < 1.0:
            raise ValueError("threshold must lie strictly between 0 and 1")
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        started = time.perf_counter()
        loaded = self.load_image(image, channel_order)
        prompt, input_ids, truncated = self.tokenize(prompt)
        pixel_values = preprocess_bgr(loaded.bgr, self.image_size).to(self.device)
        input_ids = input_ids.to(self.device)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        accumulator = MonteCarloAccumulator()
        # Adaptive runs check convergence after every chunk, so they use chunks of half the minimum.
        chunk = max(1, min(self.chunk_size, min_samples // 2)) if adaptive else self.chunk_size
        if antithetic:
            num_samples, chunk = num_samples + num_samples % 2, max(2, chunk + chunk % 2)
        stochastic = bool(getattr(getattr(self.model, "config", None), "stochastic", True))
        chunks = self.model.iter_sample_chunks(pixel_values, input_ids, num_samples, chunk, stochastic, generator,
                                               antithetic)
        for logits in chunks:
            accumulator.add_logits(logits[:, 0])
            if adaptive:
                settled = accumulator.converged(entropy_tolerance, mask_tolerance, threshold)
                if settled and accumulator.count >= min_samples:
                    break
        return self._finish(loaded, prompt, accumulator, threshold, started, truncated)

    def _finish(self, loaded, prompt, accumulator, threshold, started, truncated) -> Prediction:
        shape = loaded.bgr.shape[:2]
        probability = resize_map(accumulator.mean_probability.cpu().numpy().astype(np.float32), shape)
        entropy = resize_map(accumulator.predictive_entropy.cpu().numpy().astype(np.float32), shape)
        mutual_information = resize_map(accumulator.mutual_information.cpu().numpy().astype(np.float32), shape)
        mask = probability > threshold
        band = max(1, int(round(BOUNDARY_BAND_224 * max(shape) / self.image_size)))
        return Prediction(
            probability=probability,
            mask=mask,
            entropy=entropy,
            mutual_information=mutual_information,
            scores=image_scores(entropy, mutual_information, mask, band),
            num_samples=accumulator.count,
            threshold=threshold,
            prompt=prompt,
            model_id=self.model_id,
            seconds=time.perf_counter() - started,
            image_shape=tuple(shape),
            conversions=list(loaded.conversions),
            prompt_truncated=truncated,
        )
