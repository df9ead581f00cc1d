"""The gold split: corrected cases kept aside to score every model version, never trained on.

A case joins the gold split or the training pool once, when it is first corrected or accepted,
by a hash of the database's ``gold_seed`` and the case's pixels: the same image with several
prompts always lands on the same side, the choice survives restarts and does not depend on the
order in which cases are reviewed, and about ``gold_fraction`` of the images become gold.
"""
from __future__ import annotations

import hashlib
from typing import Optional

DEFAULT_GOLD_FRACTION = 0.2


def gold_draw(content_hash: str, seed) -> float:
    """A number uniform in [0, 1) fixed by the seed and the image's content hash."""
    digest = hashlib.sha256(f"medclipseg-gold:{seed}:{content_hash}".encode()).hexdigest()
    return int(digest[:13], 16) / float(16 ** 13)


def is_gold(content_hash: str, *, seed: Optional[str], fraction: float) -> bool:
    return gold_draw(content_hash, seed) < float(fraction)
