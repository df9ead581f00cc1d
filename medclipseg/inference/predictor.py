"""Predictor: the one place that turns (image, prompt) into masks and uncertainty maps.

Shared by the CLI and the app. It owns pre-processing, Monte-Carlo sampling and
post-processing to the input image's resolution.

Pre-processing modes (the image side is ``medclipseg.inference.transforms.preprocess_bgr``)
- exact: the authors' pipeline. Image in BGR order (as OpenCV reads it, never converted),
  bilinear resize to 224x224, scaled to [0, 1], ImageNet mean/std per channel index; prompt
  padded with 0 to the tower's fixed length (256 for BiomedBERT).
- fast: the same image pipeline; the prompt is not padded (padding tokens take part in the
  adapters, so logits differ slightly from exact mode, by up to a few hundredths).

Channel order: numpy arrays are taken as RGB, as PIL, scikit-image, matplotlib and Gradio give
them (segment-anything's predictor does the same), so a user's array is never silently
channel-swapped. Arrays from ``cv2.imread`` or ``read_image(...).bgr`` say ``channel_order="bgr"``
(every caller inside the package does). Files (paths, bytes) are decoded whatever their format and
``LoadedImage`` inputs carry their order, so neither needs saying. The model itself sees BGR, as the
authors' OpenCV pipeline does.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch

from medclipseg.io.images import LoadedImage, read_image
from medclipseg.io.prompts import validate_prompt
from medclipseg.inference import acceleration, batching
from medclipseg.inference.tokenization import MODES, PromptTokenizer
from medclipseg.inference.transforms import preprocess_bgr
from medclipseg.inference.uncertainty import MonteCarloAccumulator, image_scores
from medclipseg.registry import LoadedModel, default_device, load_model

# How numpy arrays are read unless told (module docstring): RGB, as most Python image libraries give
# them. Not read_image's default (BGR, as OpenCV), which is why the predictor always passes its own.
DEFAULT_CHANNEL_ORDER = "rgb"
# Boundary band half-width, in pixels of the model's 224 grid, scaled to the image size.
BOUNDARY_BAND_224 = 3
# Images (inputs x samples) per forward pass on a CPU by default. On a 2-core CPU passes of 8 to 64
# images of the demo model cost the same per image (benchmarks/volume_latency.py: 91-111 ms per slice
# at 8 samples for 1, 2, 4 or 8 slices per pass), while a pass's upscaled feature maps grow with it.
CPU_ROWS_PER_PASS = 16
# On a GPU a pass holds this many chunks: several inputs fill its cores (benchmarks/device_latency.py).
GPU_CHUNKS_PER_PASS = 8


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
        scores = image_scores(self.entropy, self.mutual_information, mask, self.scores["boundary_band_px"],
                              probability=self.probability)
        return replace(self, mask=mask, threshold=threshold, scores=scores)


def resize_map(values: np.ndarray, shape: tuple) -> np.ndarray:
    import cv2

    height, width = shape
    if values.shape == (height, width):
        return values
    return cv2.resize(values, (width, height), interpolation=cv2.INTER_LINEAR)


class Predictor:
    def __init__(
        self,
        model,
        tokenizer: PromptTokenizer,
        mode: str = "exact",
        device=None,
        chunk_size: Optional[int] = None,
        model_id: str = "",
        precision: str = "fp32",
        rows_per_pass: Optional[int] = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.device = torch.device(device) if device is not None else default_device()
        self.precision = acceleration.check_precision(precision, self.device)
        self.model = acceleration.prepare_model(model.to(self.device).eval(), self.precision, self.device)
        self.tokenizer = tokenizer
        self.mode = mode
        # Samples per forward pass. Small models run all 30 samples in one batch (fewer, larger
        # matrix products: 0.43 s instead of 0.52 s for the demo); large ones stay memory-bounded.
        self.chunk_size = chunk_size or (32 if model.vision_model.width <= 256 else 8)
        # Rows (samples x inputs) of one pass in predict_batch and volumes.
        if rows_per_pass is None:
            cuda = self.device.type == "cuda"
            rows_per_pass = self.chunk_size * GPU_CHUNKS_PER_PASS if cuda else min(CPU_ROWS_PER_PASS, self.chunk_size)
        if int(rows_per_pass) < 1:
            raise ValueError("rows_per_pass must be >= 1")
        self.rows_per_pass = int(rows_per_pass)
        self.model_id = model_id or getattr(model, "model_id", "") or model.config.backbone
        self.source: Optional[str] = None
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
        """source: anything ``medclipseg.registry.load_model`` loads ("demo", a model folder of
        ours, an authors' `.pth`, `hf://`, `package://`); None reads MEDCLIPSEG_WEIGHTS and falls
        back to "demo". tokenizer_source overrides where the tokenizer comes from (a vocab.txt or
        tokenizer.json path, or an hf:// / package:// address)."""
        loaded = load_model(source, device=device, tokenizer_source=tokenizer_source, trust_pickle=trust_pickle)
        return cls.from_loaded(loaded, mode=mode, device=device, **kwargs)

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, mode: str = "exact", device=None, **kwargs) -> "Predictor":
        predictor = cls(loaded.model, loaded.tokenizer, mode=mode, device=device, model_id=loaded.model_id, **kwargs)
        predictor.source = loaded.source  # what load_model loads again (recorded with model versions)
        return predictor

    # -- pre-processing ---------------------------------------------------------------------------
    def load_image(self, image, channel_order: str = DEFAULT_CHANNEL_ORDER) -> LoadedImage:
        """Paths and bytes are decoded from their file format. Arrays are taken as `channel_order`
        ("rgb", the default, as PIL/Gradio/scikit-image give them, or "bgr" as OpenCV and read_image do)."""
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
        channel_order: str = DEFAULT_CHANNEL_ORDER,
        antithetic: bool = False,
    ) -> Prediction:
        """Monte-Carlo prediction.

        adaptive=True: sampling stops early (after at least min_samples) once a chunk changes
        the entropy map by less than entropy_tolerance nats on average and the mask by less than
        mask_tolerance in Dice (1 - Dice of the masks before and after the chunk).
        antithetic=True: samples come in pairs (eps, -eps), which cancels most of the sampling
        error of the mean (sample counts are rounded up to even numbers).
        channel_order: how a numpy array is read, "rgb" (default, as PIL and Gradio) or "bgr" (as
        cv2.imread and read_image(...).bgr); files and LoadedImage inputs ignore it.
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
        with acceleration.autocast(self.device, self.precision):
            for logits in chunks:
                accumulator.add_logits(logits[:, 0].float())
                if adaptive:
                    settled = accumulator.converged(entropy_tolerance, mask_tolerance, threshold)
                    if settled and accumulator.count >= min_samples:
                        break
        return self._finish(loaded, prompt, accumulator, threshold, started, truncated)

    @torch.inference_mode()
    def predict_batch(
        self,
        items: Sequence,
        num_samples: int = 30,
        threshold: float = 0.5,
        seed: Union[None, int, Sequence[Optional[int]]] = None,
        channel_order: str = DEFAULT_CHANNEL_ORDER,
        antithetic: bool = False,
    ) -> list:
        """Monte-Carlo predictions of several (image, prompt) pairs, several per forward pass.

        ``items``: (image, prompt) pairs, images as ``predict`` takes them. ``seed``: one seed for
        every item (as ``predict(seed=...)`` on each), a sequence of one seed per item, or None.
        Item b's prediction equals ``predict(image_b, prompt_b, seed=seed_b)`` up to the float
        rounding of larger matrix products (about 1e-5 in a logit); ``rows_per_pass`` sets how many
        items share a pass (medclipseg.inference.batching). Every input is checked before the model
        runs: a bad image or prompt raises (ImageReadError, PromptError) and nothing is predicted.
        Adaptive stopping is per call of ``predict`` only.
        """
        if not 0.0 < threshold < 1.0:
            raise ValueError("threshold must lie strictly between 0 and 1")
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        items = list(items)
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * len(items)
        if len(seeds) != len(items):
            raise ValueError(f"{len(seeds)} seeds for {len(items)} items")
        started = time.perf_counter()
        inputs = []
        for image, prompt in items:
            loaded = self.load_image(image, channel_order)
            inputs.append((loaded, *self.tokenize(prompt)))
        chunk = max(1, min(self.chunk_size, num_samples))
        if antithetic:
            num_samples, chunk = num_samples + num_samples % 2, max(2, chunk + chunk % 2)
        stochastic = bool(getattr(getattr(self.model, "config", None), "stochastic", True))
        per_pass = batching.inputs_per_pass(self.rows_per_pass, chunk)
        accumulators: list = [None] * len(items)
        for group in batching.group_by_length([ids for _, _, ids, _ in inputs]):
            for first in range(0, len(group), per_pass):
                positions = group[first:first + per_pass]
                pixels = torch.cat([preprocess_bgr(inputs[b][0].bgr, self.image_size) for b in positions])
                input_ids = torch.cat([inputs[b][2] for b in positions])
                with acceleration.autocast(self.device, self.precision):
                    found = batching.sample_accumulators(
                        self.model, self.to_device(pixels), self.to_device(input_ids), num_samples, chunk,
                        [seeds[b] for b in positions], stochastic=stochastic, antithetic=antithetic)
                for b, accumulator in zip(positions, found):
                    accumulators[b] = accumulator
        share = (time.perf_counter() - started) / max(1, len(items))
        predictions = []
        for (loaded, prompt, _, truncated), accumulator in zip(inputs, accumulators):
            prediction = self._finish(loaded, prompt, accumulator, threshold, time.perf_counter(), truncated)
            prediction.seconds += share
            predictions.append(prediction)
        return predictions

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """Host to device; pinned and asynchronous on CUDA (the copy overlaps the previous pass)."""
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

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
            scores=image_scores(entropy, mutual_information, mask, band, probability=probability),
            num_samples=accumulator.count,
            threshold=threshold,
            prompt=prompt,
            model_id=self.model_id,
            seconds=time.perf_counter() - started,
            image_shape=tuple(shape),
            conversions=list(loaded.conversions),
            prompt_truncated=truncated,
        )
