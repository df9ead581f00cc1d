"""MedCLIPSeg: text-prompted medical image segmentation with calibrated uncertainty."""
__version__ = "0.1.0"

from .predictor import Prediction, Predictor  # noqa: E402

__all__ = ["Predictor", "Prediction", "__version__"]
