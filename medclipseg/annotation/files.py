"""The files beside the annotation database: case images, prediction maps and masks.

``<db stem>_files/`` holds

* ``images/<content_hash>.png``: the case pixels as decoded (lossless PNG, uint8 BGR);
* ``maps/*.npz``: one per prediction (``probability`` float32, ``entropy`` and
  ``mutual_information`` float16);
* ``volumes/``: volume cases' scans and geometry (medclipseg.annotation.volume_files); their
  prediction maps are ``maps/*.npz`` too, quantised per slice;
* ``masks/*.png``: 0/255 masks: the predicted mask of each prediction, and for every correction
  version the corrected mask and the predicted mask it was compared with.

Rows store paths relative to this folder, so the pair (database, folder) can be moved together.
Every file is written atomically (temporary file, fsync, ``os.replace``) before the row that
references it is committed: a crash can leave an unreferenced file, never a row without its file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from medclipseg.annotation.errors import StorageError
from medclipseg.io.png import PNGError, decode_png, encode_png

FOLDERS = ("images", "maps", "masks", "volumes")
MAP_NAMES = ("probability", "entropy", "mutual_information")
# Temporary files older than this are leftovers of a crash and are removed when a store opens.
STALE_TEMP_SECONDS = 24 * 3600.0


def atomic_write(path: Path, write: Callable) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over `path`.

    os.replace is atomic on one file system, so readers see the old file or the complete new one.
    """
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def new_stem(case_id: int) -> str:
    """A file name stem no other write can take: the case id, then a random part."""
    return f"{int(case_id):08d}-{uuid.uuid4().hex}"


class FileStore:
    """The files folder of one annotation database (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def create(self) -> None:
        """Make the folders and remove temporaries that a crash left behind."""
        try:
            for sub in FOLDERS:
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"Could not create the annotation folder {self.root}: {exc}.") from exc
        cutoff = time.time() - STALE_TEMP_SECONDS
        for sub in FOLDERS:
            for temporary in (self.root / sub).glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    if temporary.stat().st_mtime < cutoff:
                        temporary.unlink()

    # -- writing --------------------------------------------------------------------------------
    def write(self, relative: str, write: Callable) -> None:
        try:
            atomic_write(self.root / relative, write)
        except OSError as exc:
            raise StorageError(f"Could not write {relative} in {self.root}: {exc}. "
                               "Check free disk space and permissions.") from exc

    def write_png(self, relative: str, array: np.ndarray, *, bilevel: bool = False) -> None:
        try:
            data = encode_png(array, bilevel=bilevel)
        except PNGError as exc:
            raise StorageError(f"Could not store {relative}: {exc}") from None
        self.write(relative, lambda handle: handle.write(data))

    def write_mask(self, relative: str, mask: np.ndarray) -> None:
        """A boolean mask as a 0/255 PNG of 1 bit a pixel."""
        self.write_png(relative, mask.astype(np.uint8) * 255, bilevel=True)

    def write_maps(self, relative: str, maps: dict) -> None:
        self.write(relative, lambda handle: np.savez_compressed(handle, **maps))

    def exists(self, relative: str) -> bool:
        return (self.root / relative).is_file()

    def discard(self, *relatives: str) -> None:
        """Remove files written for a row that was not committed."""
        for relative in relatives:
            with contextlib.suppress(OSError):
                (self.root / relative).unlink()

    # -- reading --------------------------------------------------------------------------------
    def resolve(self, relative: str, folder: str) -> Path:
        """A stored relative path, refused if it points outside `folder` (paths come from callers)."""
        base = (self.root / folder).resolve()
        path = (self.root / relative).resolve()
        if base not in path.parents:
            raise StorageError(f"{relative!r} is not a file of the annotation store's {folder} folder.")
        if not path.is_file():
            raise StorageError(f"The file {relative} is missing from {self.root}.")
        return path

    def read_png(self, relative: str, folder: str, *, grey: bool) -> np.ndarray:
        path = self.resolve(relative, folder)
        try:
            return decode_png(path.read_bytes(), grey=grey)
        except (OSError, PNGError):
            raise StorageError(f"The file {relative} in {self.root} is damaged and could not be read.") from None

    def read_image(self, relative: str) -> np.ndarray:
        """uint8 H x W x 3 BGR pixels of a case image."""
        return self.read_png(relative, "images", grey=False)

    def read_mask(self, relative: str) -> np.ndarray:
        """A stored mask as bool H x W."""
        return self.read_png(relative, "masks", grey=True) > 127

    def read_maps(self, relative: str) -> dict:
        """A prediction's maps, every one as float32."""
        path = self.resolve(relative, "maps")
        try:
            with np.load(path) as data:
                return {name: data[name].astype(np.float32) for name in MAP_NAMES}
        except (OSError, ValueError, KeyError) as exc:
            raise StorageError(f"The map file {relative} is damaged and could not be read ({exc}).") from exc
