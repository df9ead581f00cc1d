"""One phantom from a modality and a seed, and the seeds of a data set's images.

Random streams. ``generate_phantom(modality, seed, ...)`` splits its seed into four independent
streams: geometry (image size, anatomy, number, placement and look of the targets), texture
(noise and tissue detail), shift (the acquisition changes of ``Shift``) and text (caption).
The shift stream is the only one that depends on ``shifted``, so an image and its shifted
variant have identical targets and masks; only the pixels differ.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from medclipseg.phantoms.geometry import image_size, place_targets
from medclipseg.phantoms.modalities import MODALITY_MODULES
from medclipseg.phantoms.prompts import image_caption, normal_prompts, target_prompts
from medclipseg.phantoms.shift import Shift, apply_shift, sample_shift
from medclipseg.phantoms.vocabulary import MODALITIES, TARGET_COUNT_PROBS


@dataclass(eq=False)
class Phantom:
    """A generated image (uint8 [H, W, 3], BGR), its targets and a caption of the whole image."""

    modality: str
    image: np.ndarray
    targets: list
    caption: str
    shift: Shift
    seed: int = 0
    shifted: bool = False
    facts: dict = field(default_factory=dict)  # image-level facts used by descriptive prompts

    def rows(self, rng: Optional[np.random.Generator] = None) -> list:
        """Prompt rows: one per target for k >= 2 targets (each selects its target), else one.

        Each row: ``prompts`` {design: text}, ``mask`` (bool [H, W], only the described target;
        all False for an image without targets), ``target_index`` (None without targets),
        ``other_indices`` (the other targets of the image), ``selection`` (k >= 2),
        ``contradicted`` (attributes the contradictory prompt gets wrong) and
        ``selectable_without_location`` (whether the prompt still singles out the target once
        the location is dropped). ``rng`` picks the wording; by default it derives from the seed.
        """
        if rng is None:
            rng = np.random.default_rng([check_seed(self.seed), modality_code(self.modality), 7])
        height, width = self.image.shape[:2]
        count = len(self.targets)
        if count == 0:
            prompts, contradicted = normal_prompts(self, rng)
            return [{
                "prompts": prompts, "mask": np.zeros((height, width), bool), "target_index": None,
                "other_indices": [], "selection": False, "contradicted": contradicted,
                "selectable_without_location": True,
            }]
        rows = []
        for index, target in enumerate(self.targets):
            prompts, contradicted, without_location = target_prompts(self, index, rng)
            rows.append({
                "prompts": prompts, "mask": target.mask.copy(), "target_index": index,
                "other_indices": [j for j in range(count) if j != index], "selection": count >= 2,
                "contradicted": contradicted, "selectable_without_location": without_location,
            })
        return rows


def modality_code(modality: str) -> int:
    """A number per modality mixed into seeds (CRC32: the same in every process, unlike hash())."""
    return zlib.crc32(modality.encode("utf-8"))


def check_seed(seed: int) -> int:
    """The seed as an int; negatives, booleans and non-integers are refused."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def derive_image_seed(seed: int, modality: str, index: int) -> int:
    """The seed of image ``index`` of ``modality`` in a data set written with ``seed``.

    Depends only on these three values, so data sets of different sizes share their first images.
    """
    sequence = np.random.SeedSequence([check_seed(seed), modality_code(modality), int(index)])
    return int(sequence.generate_state(1, np.uint64)[0])


def _streams(modality: str, seed: int) -> list:
    """Independent generators: geometry, texture, shift, text."""
    root = np.random.SeedSequence([check_seed(seed), modality_code(modality)])
    return [np.random.default_rng(child) for child in root.spawn(4)]


def generate_phantom(modality: str, seed: int, shifted: bool = False, num_targets: Optional[int] = None,
                     *, target_count_probs: Sequence[float] = TARGET_COUNT_PROBS) -> Phantom:
    """Render one phantom. Same arguments -> identical image, targets and caption.

    ``num_targets`` (0-3) forces the number of targets (a crowded image may get fewer: a target
    that cannot be placed is dropped); otherwise it is drawn from ``target_count_probs``
    (P(0), P(1), P(2), P(3)). ``shifted`` draws the acquisition from the shifted range; it changes
    the pixels only, never the targets.
    """
    if modality not in MODALITIES:
        raise ValueError(f"Unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}.")
    probabilities = check_count_probs(target_count_probs)
    if num_targets is not None and (isinstance(num_targets, bool) or not 0 <= int(num_targets) <= 3):
        raise ValueError(f"num_targets must be 0, 1, 2 or 3, got {num_targets!r}")
    geometry, texture, shift_rng, text = _streams(modality, seed)
    height, width = image_size(geometry, modality)
    count = int(geometry.choice(4, p=probabilities))
    if num_targets is not None:
        count = int(num_targets)
    renderer = MODALITY_MODULES[modality]
    anatomy = renderer.layout(geometry, height, width)
    targets = place_targets(geometry, modality, count, anatomy["region"], anatomy.get("prefer"))
    for target in targets:
        renderer.appearance(geometry, target, anatomy)
    image = renderer.render(texture, anatomy, targets)
    shift = sample_shift(shift_rng, bool(shifted))
    image = apply_shift(image, shift, shift_rng, modality, anatomy, targets)
    return Phantom(modality=modality, image=image, targets=targets, caption=image_caption(text, modality, targets),
                   shift=shift, seed=int(seed), shifted=bool(shifted), facts=dict(anatomy["facts"]))


def check_count_probs(probabilities) -> np.ndarray:
    values = np.asarray(list(probabilities), float)
    if values.shape != (4,) or (values < 0).any() or values.sum() <= 0:
        raise ValueError(f"target_count_probs must be 4 non-negative numbers (P(0)..P(3)), got {probabilities!r}")
    return values / values.sum()
