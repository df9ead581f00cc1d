"""Snapshots of an annotation database into a folder that outlives the machine (a mounted bucket),
or into a Hugging Face Hub dataset (medclipseg.annotation.hub_snapshots, same layout).

Hugging Face Spaces lose the container's disk on every restart; what persists is a storage
bucket mounted into the Space (for example at ``/data``): object storage, with no file locking
and no multiple writers, where a live SQLite file and its WAL must not sit. So the live database
stays on the container's own disk, and this module keeps copies of it in the bucket:

``<snapshot folder>/``
  ``snapshots/<db stem>-<UTC time>.db``  consistent copies made with SQLite's backup API
                                         (readers and writers go on meanwhile); the newest
                                         ``KEEP`` are kept
  ``files/...``                          a mirror of the files beside the database (case pixels,
                                         maps, masks, trained models); those files are written
                                         once and never changed, so each is copied once

A snapshot is taken every ``MEDCLIPSEG_SNAPSHOT_SECONDS`` (:class:`Snapshotter`) and when the
app stops. At boot, :func:`restore` puts the newest readable snapshot and the mirrored files in
place when the live database is missing (a fresh container). What can be lost is what was
acknowledged after the last snapshot: at most one interval.

Order of one snapshot: mirror the files, back the database up into a local temporary file,
mirror the files again (those written meanwhile), then move the copy into ``snapshots/``. Every
file a row names is written before the row commits, so every file the copy names was on disk
when the copy was made and is in the mirror by the end; the one exception is a draft replaced
in the instant between the copy and the second pass (drafts are the only files ever deleted),
and :func:`restore` drops such a draft row, never a saved version.
"""
from __future__ import annotations

import contextlib
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Union

from medclipseg.annotation import hub_snapshots
from medclipseg.annotation.errors import StorageError

KEEP = 8
SNAPSHOTS = "snapshots"
FILES = "files"
# Scratch of running retrainings: not part of what the database names.
_NOT_MIRRORED = ("jobs",)


@dataclass(frozen=True)
class Snapshot:
    path: Union[Path, str]  # a file in the folder, or an hf://datasets/... address
    seconds: float       # how long taking it took
    files_copied: int    # files newly mirrored by it


def files_dir_of(db_path: Path) -> Path:
    return db_path.parent / f"{db_path.stem}_files"


def files_to_mirror(source: Path):
    """(path, path relative to `source`) of each file under `source` a snapshot carries."""
    if not source.is_dir():
        return
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        # Retraining scratch, partial copies, and the download cache huggingface_hub keeps in a folder.
        if relative.parts[0] in _NOT_MIRRORED or any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file():
            yield path, relative


def mirror(source: Path, target: Path, *, move: bool = False) -> int:
    """Copy (or move) the files under `source` that `target` lacks (or holds with another size); returns how many."""
    copied = 0
    for path, relative in files_to_mirror(Path(source)):
        destination = target / relative
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # a draft replaced while we walk
            continue
        if destination.is_file() and destination.stat().st_size == size:
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f".{destination.name}.partial")
        try:
            if move:
                shutil.move(str(path), partial)
            else:
                shutil.copyfile(path, partial)
        except FileNotFoundError:
            partial.unlink(missing_ok=True)
            continue
        partial.replace(destination)
        copied += 1
    return copied


def backup(db_path: Path, copy_path: Path) -> None:
    """A consistent copy of the live database (SQLite's online backup API), as one file (no WAL)."""
    source = sqlite3.connect(str(db_path), timeout=30.0)
    target = sqlite3.connect(str(copy_path))
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")
    finally:
        target.close()
        source.close()


def snapshot_names(folder: Path, stem: str) -> list:
    """The snapshots of database `stem` in `folder`, newest first."""
    found = (Path(folder) / SNAPSHOTS).glob(f"{stem}-*.db")
    return sorted((path for path in found if not path.name.startswith(".")), reverse=True)


def take_snapshot(db_path, folder, *, keep: int = KEEP) -> Snapshot:
    """One snapshot of the database at `db_path` (and its files) into `folder` (module docstring), or into
    a Hub dataset when `folder` is an ``hf://datasets/...`` address (medclipseg.annotation.hub_snapshots)."""
    if hub_snapshots.is_hub_target(folder):
        return hub_snapshots.take_snapshot(db_path, hub_snapshots.parse_target(folder), keep=keep)
    started = time.perf_counter()
    db_path, folder = Path(db_path), Path(folder)
    if not db_path.is_file():
        raise StorageError(f"There is no annotation database at {db_path} to snapshot.")
    try:
        (folder / SNAPSHOTS).mkdir(parents=True, exist_ok=True)
        files_dir = files_dir_of(db_path)
        copied = mirror(files_dir, folder / FILES)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        local_copy = db_path.parent / f".{db_path.stem}-{stamp}.snapshot"
        try:
            backup(db_path, local_copy)
            copied += mirror(files_dir, folder / FILES)
            final = folder / SNAPSHOTS / f"{db_path.stem}-{stamp}.db"
            partial = final.with_name(f".{final.name}.partial")
            shutil.copyfile(local_copy, partial)
            partial.replace(final)
        finally:
            local_copy.unlink(missing_ok=True)
        for old in snapshot_names(folder, db_path.stem)[max(1, int(keep)):]:
            old.unlink(missing_ok=True)
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"Could not snapshot the annotation database into {folder}: {exc}") from exc
    return Snapshot(path=final, seconds=time.perf_counter() - started, files_copied=copied)


def readable(path: Path) -> bool:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def drop_drafts_without_files(db_path: Path, files_dir: Path) -> int:
    """Remove draft rows whose mask file did not make it into the mirror (module docstring)."""
    conn = sqlite3.connect(str(db_path))
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "drafts" not in tables:
            return 0
        missing = [draft_id for draft_id, mask_path in conn.execute("SELECT id, mask_path FROM drafts")
                   if not (files_dir / mask_path).is_file()]
        with conn:
            conn.executemany("DELETE FROM drafts WHERE id = ?", [(draft_id,) for draft_id in missing])
        return len(missing)
    finally:
        conn.close()


def restore(db_path, folder) -> Optional[Path]:
    """Put the newest readable snapshot in `folder` at `db_path`, with the mirrored files beside it,
    when there is no database at `db_path` yet; returns the snapshot used (None: nothing done, as
    the database exists or there is no snapshot). A live database is never replaced. `folder` may be
    an ``hf://datasets/...`` address (medclipseg.annotation.hub_snapshots); its snapshot's address is returned."""
    if hub_snapshots.is_hub_target(folder):
        return hub_snapshots.restore(db_path, hub_snapshots.parse_target(folder))
    db_path, folder = Path(db_path), Path(folder)
    if db_path.exists():
        return None
    # A database earlier releases kept live in the folder itself (the old advice for /data) is
    # taken when there is no snapshot yet: copied with the backup API, its files beside it.
    legacy = folder / db_path.name
    if not snapshot_names(folder, db_path.stem) and legacy.is_file() and readable(legacy):
        db_path.parent.mkdir(parents=True, exist_ok=True)
        partial = db_path.with_name(f".{db_path.name}.restoring")
        backup(legacy, partial)
        mirror(folder / f"{legacy.stem}_files", files_dir_of(db_path))
        partial.replace(db_path)
        return legacy
    for candidate in snapshot_names(folder, db_path.stem):
        if not readable(candidate):
            continue
        db_path.parent.mkdir(parents=True, exist_ok=True)
        partial = db_path.with_name(f".{db_path.name}.restoring")
        shutil.copyfile(candidate, partial)
        files_dir = files_dir_of(db_path)
        mirror(folder / FILES, files_dir)
        drop_drafts_without_files(partial, files_dir)
        partial.replace(db_path)
        return candidate
    return None


class Snapshotter:
    """Takes a snapshot every `interval` seconds in a background thread, and a last one at ``stop()``."""

    def __init__(self, db_path, folder, *, interval: float, keep: int = KEEP,
                 log: Callable[[str], None] = print):
        self.db_path = Path(db_path)
        self.folder = folder if hub_snapshots.is_hub_target(folder) else Path(folder)
        self.interval, self.keep, self.log = float(interval), int(keep), log
        self.last: Optional[Snapshot] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one snapshot at a time (the timer's and the last one)
        self._thread = threading.Thread(target=self._run, daemon=True, name="snapshots")

    def start(self) -> "Snapshotter":
        self._thread.start()
        return self

    def snapshot_now(self) -> Optional[Snapshot]:
        with self._lock:
            try:
                self.last = take_snapshot(self.db_path, self.folder, keep=self.keep)
            except StorageError as exc:  # a full or unmounted bucket must not stop the app; say so
                self.log(f"WARNING: {exc}")
                return None
        return self.last

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.snapshot_now()

    def stop(self) -> Optional[Snapshot]:
        """Stop the timer and take the last snapshot (the app calls this when it stops)."""
        self._stop.set()
        with contextlib.suppress(RuntimeError):
            self._thread.join(timeout=self.interval + 60)
        return self.snapshot_now()
