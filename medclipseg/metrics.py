"""The public metric names: ``medclipseg.metrics.dice_score`` and friends.

The implementations live in :mod:`medclipseg.evaluation.metrics`; this module is the short,
stable import path that outside checks and notebooks use.
"""
from medclipseg.evaluation.metrics import (  # noqa: F401
    PixelUncertaintyStats,
    average_ranks,
    dice_score,
    normalized_surface_dice,
    resize_prediction_to,
    spearman,
)

__all__ = ["PixelUncertaintyStats", "average_ranks", "dice_score", "normalized_surface_dice",
           "resize_prediction_to", "spearman"]
