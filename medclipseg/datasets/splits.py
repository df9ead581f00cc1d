"""Dividing a data set into train/val/test, and deciding whether a destination folder may be written.

Both writers of the authors' layout (the phantom generator and the annotation export) use these,
so the two agree on how many items each split gets and on which folders they refuse to touch.
"""
from __future__ import annotations

import math
import operator
import os
from pathlib import Path
from typing import Callable, Sequence, Union

__all__ = ["DestinationError", "split_sizes", "check_destination"]

PathLike = Union[str, os.PathLike]


def split_sizes(total: int, ratios: Sequence[float]) -> list:
    """Items per split for ``total`` items divided in proportion to ``ratios`` (any positive sum).

    Largest remainders: each split gets the floor of its share, and the items left over go to the
    largest fractional parts (the earlier split first on an exact tie). Then, when there are at least as many
    items as splits with a positive ratio, every such split gets at least one item (taken from the
    largest split); and the first split (train), when its ratio is positive, is never left empty
    while there is an item. The sizes always sum to ``total``.
    """
    if isinstance(total, bool) or not hasattr(total, "__index__"):  # ints and numpy integers
        raise ValueError(f"total must be a non-negative integer, got {total!r}")
    total = operator.index(total)
    values = [float(r) for r in ratios]
    if (total < 0 or not values or any(r < 0 or not math.isfinite(r) for r in values)
            or sum(values) <= 0):
        raise ValueError(f"split sizes need a non-negative total and non-negative ratios with a positive sum, "
                         f"got total={total!r}, ratios={list(ratios)!r}")
    scale = sum(values)
    shares = [r / scale * total for r in values]
    counts = [math.floor(share) for share in shares]
    left = total - sum(counts)
    # Remainders are compared as computed (0.7 * 2 - 1 is a hair below 0.2 * 2); rounding them
    # would change the splits of data sets already written.
    by_remainder = sorted(range(len(values)), key=lambda i: -(shares[i] - counts[i]))  # stable sort
    for i in by_remainder[:left]:
        counts[i] += 1
    positive = [r > 0 for r in values]

    def give_one(i: int) -> None:
        donor = max(range(len(counts)), key=lambda j: (counts[j], -j))  # largest, earliest on ties
        counts[donor] -= 1
        counts[i] += 1

    if total >= sum(positive):
        for i in range(len(counts)):
            if positive[i] and counts[i] == 0:
                give_one(i)
    elif total >= 1 and positive[0] and counts[0] == 0:
        give_one(0)
    return counts


class DestinationError(FileExistsError, ValueError):
    """A destination cannot be written: not a folder, a broken link, or a non-empty folder that is
    not a previous output of the same writer (or may not be replaced). Nothing was changed."""


def check_destination(folder: PathLike, *, is_ours: Callable[[Path], bool], what: str, marker: str,
                      overwrite: bool = True) -> str:
    """The state of an output folder before a writer fills it: ``"missing"``, ``"empty"`` or ``"ours"``.

    ``is_ours(folder)`` recognises a previous output of the writer (by its manifest); ``what`` names
    such an output ("a previous phantom output") and ``marker`` the file that identifies it, for
    the messages. A non-empty folder is refused unless ``overwrite`` is set and ``is_ours`` accepts
    it, so that a folder of someone else's files is never replaced. Raises ``DestinationError``.
    """
    folder = Path(folder)
    if not folder.exists():
        if folder.is_symlink():
            raise DestinationError(f"'{folder}' is a broken symbolic link.")
        return "missing"
    if not folder.is_dir():
        raise DestinationError(f"'{folder}' exists and is not a folder.")
    if not any(folder.iterdir()):
        return "empty"
    if not overwrite:
        raise DestinationError(f"'{folder}' is not empty. Choose a new folder, or pass overwrite (--overwrite) "
                               f"to replace {what}.")
    if not is_ours(folder):
        raise DestinationError(f"Refusing to overwrite '{folder}': it is not empty and is not {what} "
                               f"(no {marker}). Choose an empty or new folder.")
    return "ours"


def prepare_generated_output(folder: PathLike, *, is_ours: Callable[[Path], bool], what: str, manifest_file: str,
                             generator: str, owned_entries, marker_content: str) -> None:
    """Make ``folder`` ready for a data generator (phantoms, realdata): refuse a foreign non-empty
    folder (``check_destination``), remove only the ``owned_entries`` a previous run wrote, then
    write the manifest ``marker_content`` first, so that an interrupted run is replaced by the next."""
    import shutil

    folder = Path(folder)
    state = check_destination(folder, is_ours=is_ours, what=what, marker=f"{manifest_file} from {generator}")
    if state == "ours":
        for name in owned_entries:
            path = folder / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / manifest_file).write_text(marker_content)
