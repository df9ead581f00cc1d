"""Torch dataset over one split of the authors' layout; pre-processing shared with the Predictor."""
from __future__ import annotations

import random
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from medclipseg.io.images import read_image
from medclipseg.io.masks import read_mask
from medclipseg.inference.transforms import preprocess_bgr
from medclipseg.inference.tokenization import PromptTokenizer
from medclipseg.datasets.layout import Sample


def rotate_pair(image: np.ndarray, mask: np.ndarray, degrees: float):
    """Rotate image (bilinear) and mask (nearest) about the centre, keeping the size."""
    height, width = mask.shape
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), degrees, 1.0)
    image = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)
    mask = cv2.warpAffine(mask, matrix, (width, height), flags=cv2.INTER_NEAREST, borderValue=0)
    return image, mask


class SegmentationDataset(Dataset):
    """Items: pixel_values [3, S, S], input_ids [L], mask [S, S] (float 0/1), index.

    Augmentation (training): rotation by a uniform angle in [-degrees, degrees] with probability p.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        tokenizer: PromptTokenizer,
        image_size: int = 224,
        tokenizer_mode: str = "exact",
        augment: bool = False,
        rotation_degrees: float = 20.0,
        rotation_probability: float = 0.5,
        seed: int = 0,
    ):
        self.samples = list(samples)
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.tokenizer_mode = tokenizer_mode
        self.augment = augment
        self.rotation_degrees = rotation_degrees
        self.rotation_probability = rotation_probability
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = read_image(sample.image_path).bgr
        mask = read_mask(sample.mask_path).astype(np.uint8)
        if mask.shape != image.shape[:2]:
            mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        if self.augment and self.rng.random() < self.rotation_probability:
            angle = self.rng.uniform(-self.rotation_degrees, self.rotation_degrees)
            image, mask = rotate_pair(image, mask, angle)
        mask = cv2.resize(mask, (self.image_size, self.image_size), interpolation=cv2.INTER_NEAREST)
        return {
            "pixel_values": preprocess_bgr(image, self.image_size)[0],
            "input_ids": self.tokenizer([sample.prompt], mode=self.tokenizer_mode)[0],
            "mask": torch.from_numpy(mask.astype(np.float32)),
            "index": index,
        }


def collate(items: list) -> dict:
    """Stack a batch, padding input ids (pad id 0) to the longest in the batch."""
    length = max(item["input_ids"].shape[0] for item in items)
    input_ids = torch.zeros(len(items), length, dtype=torch.long)
    for row, item in enumerate(items):
        input_ids[row, : item["input_ids"].shape[0]] = item["input_ids"]
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "input_ids": input_ids,
        "mask": torch.stack([item["mask"] for item in items]),
        "index": torch.tensor([item["index"] for item in items]),
    }
