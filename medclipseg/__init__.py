"""MedCLIPSeg: text-prompted medical image segmentation with calibrated uncertainty.

``import medclipseg`` is cheap: torch is imported only when a model is needed
(``medclipseg.Predictor`` and ``medclipseg.load_model`` resolve on first use).
"""
from __future__ import annotations

from medclipseg.lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "Predictor": "medclipseg.inference.predictor",
    "Prediction": "medclipseg.inference.predictor",
    "load_model": "medclipseg.registry",
    "LoadedModel": "medclipseg.registry",
}

__all__ = ["Predictor", "Prediction", "load_model", "LoadedModel", "__version__"]

__getattr__ = lazy_getattr(globals(), _LAZY)
