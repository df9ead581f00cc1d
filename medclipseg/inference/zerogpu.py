"""The model's GPU entry points for Hugging Face ZeroGPU Spaces.

On ZeroGPU a Space holds a GPU only inside functions decorated with ``spaces.GPU``, each call for
the duration it asks (shorter requests are scheduled first; a call that outlives its duration is
stopped). Every prediction the app makes goes through one of the functions below; each asks for a
duration estimated from the request's size (images or slices x Monte-Carlo samples). Where the
``spaces`` package is not installed (anywhere but Spaces) they are the plain functions; on a Space
without ZeroGPU ``spaces.GPU`` itself does nothing.
"""
from __future__ import annotations

import math

__all__ = ["predict", "predict_volume", "image_seconds", "volume_seconds", "MAX_SECONDS"]

# Seconds asked for: a fixed part (moving the model's weights onto the GPU the call gets, kernels'
# first launch), plus a part per image-sample of the authors' ViT-B/16 model, with a margin of about
# three times the rate measured on an H100 (benchmarks/device_latency.py), within ZeroGPU's limits.
SETUP_SECONDS = 10.0
SECONDS_PER_IMAGE_SAMPLE = 0.01
MIN_SECONDS = 15
MAX_SECONDS = 300


def _clamped(seconds: float) -> int:
    return int(min(MAX_SECONDS, max(MIN_SECONDS, math.ceil(seconds))))


def image_seconds(predictor, image, prompt, num_samples: int = 30, **options) -> int:
    """The duration one 2-D prediction asks for."""
    return _clamped(SETUP_SECONDS + SECONDS_PER_IMAGE_SAMPLE * int(num_samples))


def volume_seconds(predictor, volume, prompt, num_samples: int = 8, **options) -> int:
    """The duration a volume asks for: every slice along its acquisition axis, each num_samples times."""
    slices = int(volume.to_display(plane=volume.slice_plane).shape[0])
    return _clamped(SETUP_SECONDS + SECONDS_PER_IMAGE_SAMPLE * slices * int(num_samples))


def _gpu(duration):
    """spaces.GPU(duration=...) where the spaces package is installed, else nothing."""
    try:
        import spaces
    except ImportError:
        return lambda function: function
    return spaces.GPU(duration=duration)


@_gpu(image_seconds)
def predict(predictor, image, prompt, **options):
    """``predictor.predict(image, prompt, **options)`` on the GPU a ZeroGPU Space lends for it."""
    return predictor.predict(image, prompt, **options)


@_gpu(volume_seconds)
def predict_volume(predictor, volume, prompt, **options):
    """``medclipseg.inference.volume.predict_volume`` on the GPU a ZeroGPU Space lends for it."""
    from medclipseg.inference.volume import predict_volume as predict_slices

    return predict_slices(predictor, volume, prompt, **options)
