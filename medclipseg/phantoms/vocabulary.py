"""The attribute vocabularies of phantom targets and the generator's size parameters.

Every image has 0 to 3 targets (lesions, tumours, polyps, opacities) with a size, a shape, a
location and a category from these vocabularies.
"""
from __future__ import annotations

MODALITIES = ("breast_ultrasound", "brain_mri", "dermoscopy", "colonoscopy", "chest_xray")
SIZES = ("small", "medium", "large")
SHAPES = ("round", "oval", "lobulated", "irregular")
LOCATIONS = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)
CATEGORIES = {
    "breast_ultrasound": ("benign", "malignant"),
    "brain_mri": ("glioma", "meningioma", "metastasis"),
    "dermoscopy": ("benign", "malignant"),
    "colonoscopy": ("adenomatous", "hyperplastic"),
    "chest_xray": ("pneumonia", "nodule"),
}
# Words that give away where a target is: never used by the missing_location design.
LOCATION_WORDS = frozenset({
    "top", "bottom", "left", "right", "upper", "lower", "centre", "center", "middle", "central",
    "uppermost", "lowest", "leftmost", "rightmost", "side", "corner",
})
# Area fraction of the image per size, per modality; the gaps between bins keep sizes distinct.
SIZE_BINS = {
    "breast_ultrasound": {"small": (0.016, 0.028), "medium": (0.038, 0.065), "large": (0.082, 0.130)},
    "brain_mri": {"small": (0.016, 0.023), "medium": (0.030, 0.043), "large": (0.053, 0.075)},
    "dermoscopy": {"small": (0.020, 0.045), "medium": (0.060, 0.110), "large": (0.145, 0.250)},
    "colonoscopy": {"small": (0.016, 0.034), "medium": (0.045, 0.080), "large": (0.100, 0.160)},
    "chest_xray": {"small": (0.016, 0.022), "medium": (0.028, 0.038), "large": (0.046, 0.062)},
}
TARGET_COUNT_PROBS = (0.15, 0.50, 0.25, 0.10)  # P(0), P(1), P(2), P(3) targets per image
IMAGE_SIZE_RANGE = (192, 320)
