"""Diversity for the review queue: what makes two cases alike, and which of the top cases to serve.

Uncertainty sampling alone serves near-duplicates: neighbouring slices of one scan look alike and
are uncertain together, so a round of labels can go to one stretch of one scan with one prompt
while other kinds of case wait. A *diverse* order keeps its base order's scores and, when a case
is served, prefers among the top candidates one unlike the cases already taken in this round.

Likeness of two cases, in [0, 1] (a weighted sum, so each part is easy to reason about):

    similarity = IMAGE_WEIGHT * max(0, cos(descriptor_a, descriptor_b))
               + PROMPT_WEIGHT * [same prompt]
               + SOURCE_WEIGHT * [same source and at most NEIGHBOUR_SLICES apart]

- the descriptor is a tiny-image fingerprint: the grey image reduced to 16 x 16 by area
  averaging, mean removed, unit length (cosine 1 for the same picture at any size or contrast,
  high for neighbouring slices of one scan, low for unrelated images);
- the source and slice index come from the file name (``caudate_z071.png`` -> ``caudate_z``, 71;
  ``IM-0001-0042.dcm`` -> ``IM-0001-``, 42), so slices of one series named in sequence are neighbours.

Serving (maximal marginal relevance, Carbonell & Goldstein 1998): of the ``CANDIDATES`` top cases
of the base order, take the one with the highest

    value = (1 - DIVERSITY) * relevance - DIVERSITY * max similarity to the round

where relevance is 1 - position / (number of candidates) in the base order (1 for the top case)
and "the round" is the ``ROUND_CONTEXT`` cases labelled last plus the cases leased to others now. With an empty round the top case is served, as in the
base order. Everything here is numpy over a few hundred small vectors: well under a millisecond.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Optional, Sequence

import numpy as np

DESCRIPTOR_SIDE = 16
DESCRIPTOR_BYTES = DESCRIPTOR_SIDE * DESCRIPTOR_SIDE * 2  # float16
IMAGE_WEIGHT = 0.6
PROMPT_WEIGHT = 0.25
SOURCE_WEIGHT = 0.15
NEIGHBOUR_SLICES = 5
DIVERSITY = 0.6
CANDIDATES = 128      # top cases of the base order considered per serve
ROUND_CONTEXT = 64    # latest labelled cases of the round compared against

_NUMBERED = re.compile(r"^(.*?)(\d+)(\D*)$")


def image_descriptor(image: np.ndarray) -> bytes:
    """The tiny-image fingerprint of an H x W (x C) image as float16 bytes (see the module docstring)."""
    import cv2

    pixels = np.asarray(image)
    if pixels.ndim == 3:
        pixels = pixels.astype(np.float32).mean(axis=2)
    pixels = pixels.astype(np.float32, copy=False)
    small = cv2.resize(pixels, (DESCRIPTOR_SIDE, DESCRIPTOR_SIDE), interpolation=cv2.INTER_AREA)
    small = small - small.mean()
    norm = float(np.linalg.norm(small))
    # A flat image has no shape to compare: all zeros, so it resembles nothing by its pixels.
    vector = small / norm if norm > 1e-6 else np.zeros_like(small)
    return vector.astype(np.float16).tobytes()


def source_and_slice(original_name: str) -> tuple:
    """(source key, slice index) read from a file name; (name, None) when it ends in no number."""
    stem = PurePath(str(original_name or "")).name
    for suffix in (".gz", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".nii"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    match = _NUMBERED.match(stem)
    if not match:
        return stem, None
    prefix, number, tail = match.groups()
    return f"{prefix}#{tail}", int(number)


@dataclass(frozen=True)
class QueueCase:
    """What the diverse order needs of one case."""

    id: int
    prompt: str
    descriptor: Optional[bytes]
    source_key: Optional[str]
    slice_index: Optional[int]
    score: Optional[float] = None


def _descriptors(cases: Sequence[QueueCase]) -> np.ndarray:
    matrix = np.zeros((len(cases), DESCRIPTOR_SIDE * DESCRIPTOR_SIDE), dtype=np.float32)
    for row, case in enumerate(cases):
        if case.descriptor is not None and len(case.descriptor) == DESCRIPTOR_BYTES:
            matrix[row] = np.frombuffer(case.descriptor, dtype=np.float16)
    return matrix


def similarity_matrix(a: Sequence[QueueCase], b: Sequence[QueueCase]) -> np.ndarray:
    """similarity[i, j] of case a[i] and case b[j] (the module docstring's formula)."""
    if not a or not b:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    image = np.clip(_descriptors(a) @ _descriptors(b).T, 0.0, 1.0)
    prompts_a = np.array([c.prompt for c in a], dtype=object)[:, None]
    prompts_b = np.array([c.prompt for c in b], dtype=object)[None, :]
    same_prompt = prompts_a == prompts_b
    source_a = np.array([c.source_key for c in a], dtype=object)[:, None]
    source_b = np.array([c.source_key for c in b], dtype=object)[None, :]
    slice_a = np.array([np.nan if c.slice_index is None else c.slice_index for c in a], dtype=np.float64)[:, None]
    slice_b = np.array([np.nan if c.slice_index is None else c.slice_index for c in b], dtype=np.float64)[None, :]
    with np.errstate(invalid="ignore"):
        near = (source_a == source_b) & (np.abs(slice_a - slice_b) <= NEIGHBOUR_SLICES)
    return (IMAGE_WEIGHT * image + PROMPT_WEIGHT * same_prompt + SOURCE_WEIGHT * near).astype(np.float32)


def pick(candidates: Sequence[QueueCase], taken: Sequence[QueueCase], *, diversity: float = DIVERSITY) -> int:
    """Index into `candidates` (in base order, best first) of the case to serve next."""
    if not candidates:
        raise ValueError("No candidates to pick from.")
    if not taken:
        return 0
    # Relevance by position in the base order, not by score: the same for every acquisition (random
    # keys included), and a near-duplicate (similarity ~1) drops below half the candidate list.
    relevance = 1.0 - np.arange(len(candidates)) / len(candidates)
    redundancy = similarity_matrix(candidates, taken).max(axis=1)
    value = (1.0 - diversity) * relevance - diversity * redundancy
    return int(np.argmax(value))  # ties go to the earlier (better ranked) candidate
