"""MedCLIPSeg: text-prompted medical image segmentation with calibrated uncertainty.

``import medclipseg`` is cheap: torch is imported only when a model is needed
(``medclipseg.Predictor`` and ``medclipseg.load_model`` resolve on first use).
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Predictor": ("medclipseg.inference.predictor", "Predictor"),
    "Prediction": ("medclipseg.inference.predictor", "Prediction"),
    "load_model": ("medclipseg.registry", "load_model"),
    "LoadedModel": ("medclipseg.registry", "LoadedModel"),
}

__all__ = ["Predictor", "Prediction", "load_model", "LoadedModel", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module_name, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medclipseg' has no attribute {name!r}")
