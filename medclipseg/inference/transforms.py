"""Image pre-processing shared by inference, training and stage-1 pre-training.

The authors' pipeline: an 8-bit image in BGR order (as OpenCV reads it, never converted),
bilinear resize to the model's input size, scaled to [0, 1], then ImageNet mean/std per
channel index (so the "red" statistics apply to the blue channel, as in their code).
"""
from __future__ import annotations

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_bgr(bgr: np.ndarray, size: int = 224):
    """uint8 HxWx3 (BGR, kept as is) -> normalised float tensor [1, 3, size, size]."""
    import cv2
    import torch

    resized = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_LINEAR)
    scaled = resized.astype(np.float32) / 255.0
    normalised = (scaled - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1))).unsqueeze(0)
