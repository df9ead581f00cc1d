"""The public metric names: ``medclipseg.metrics.dice_score`` and friends.

The implementations live in :mod:`medclipseg.evaluation.metrics`; this module is the short,
stable import path that outside checks and notebooks use. ``normalized_surface_dice(pred, truth,
tolerance=2.0, rule="authors")`` gives the NSD as the MedCLIPSeg authors compute it (the rule of
the paper's numbers); ``rule="contour"``, the default, the 2-D contour NSD. Volumes:
``dice_3d(pred, truth)``, ``surface_dice_3d(pred, truth, spacing_mm, tolerance_mm)`` (NSD in
millimetres on anisotropic grids) and ``hausdorff95_3d(pred, truth, spacing_mm)``.
"""
from medclipseg.evaluation.metrics import (  # noqa: F401
    NSD_RULES,
    PixelUncertaintyStats,
    average_ranks,
    dice_3d,
    dice_score,
    hausdorff95_3d,
    normalized_surface_dice,
    resize_prediction_to,
    spearman,
    surface_dice_3d,
)

__all__ = ["NSD_RULES", "PixelUncertaintyStats", "average_ranks", "dice_3d", "dice_score", "hausdorff95_3d",
           "normalized_surface_dice", "resize_prediction_to", "spearman", "surface_dice_3d"]
