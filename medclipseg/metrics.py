"""The public metric names: ``medclipseg.metrics.dice_score`` and friends.

The implementations live in :mod:`medclipseg.evaluation.metrics`; this module is the short,
stable import path that outside checks and notebooks use. ``normalized_surface_dice(pred, truth,
tolerance=2.0, rule="authors")`` gives the NSD as the MedCLIPSeg authors compute it (the rule of
the paper's numbers); ``rule="contour"``, the default, the 2-D contour NSD.
"""
from medclipseg.evaluation.metrics import (  # noqa: F401
    NSD_RULES,
    PixelUncertaintyStats,
    average_ranks,
    dice_score,
    normalized_surface_dice,
    resize_prediction_to,
    spearman,
)

__all__ = ["NSD_RULES", "PixelUncertaintyStats", "average_ranks", "dice_score", "normalized_surface_dice",
           "resize_prediction_to", "spearman"]
