"""Short-lived files handed to users (API masks and maps, case images, export zips).

Nothing the app writes outside its data folder outlives its use: every such file lives in a
folder under one per-process root in the system temp directory, removed soon after use, at exit,
or, for a root left by a killed process, when the next one starts.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Optional


class ScratchSpace:
    """Short-lived folders for files handed to users, under one root in the system temp dir.

    The web server copies a returned file into its own cache as soon as the handler returns, so a
    folder is only needed until then: each one is removed ``keep_seconds`` after it was filled (on
    the next ``folder()`` call), the root when the process exits, and roots left by processes that
    no longer run (a killed server) when a new root is made.
    """

    PREFIX = "medclipseg-app-"

    def __init__(self, keep_seconds: float = 300.0, parent=None):
        self.keep_seconds = float(keep_seconds)
        self._parent = Path(parent) if parent is not None else None
        self._root: Optional[Path] = None
        self._finished: "dict[Path, float]" = {}
        self._lock = threading.Lock()

    @property
    def parent(self) -> Path:
        return self._parent or Path(tempfile.gettempdir())

    @property
    def root(self) -> Path:
        with self._lock:
            if self._root is None or not self._root.is_dir():
                self.remove_orphans()
                self._root = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-", dir=self.parent))
                atexit.register(self.close)
            return self._root

    @contextlib.contextmanager
    def folder(self) -> Iterator[Path]:
        """A fresh folder; it counts as in use until the ``with`` block ends."""
        self.purge()
        path = Path(tempfile.mkdtemp(dir=self.root))
        try:
            yield path
        finally:
            with self._lock:
                self._finished[path] = time.monotonic()

    def purge(self, *, older_than: Optional[float] = None) -> int:
        """Remove finished folders older than ``older_than`` seconds (default keep_seconds)."""
        limit = self.keep_seconds if older_than is None else float(older_than)
        now = time.monotonic()
        with self._lock:
            old = [path for path, finished in self._finished.items() if now - finished >= limit]
            for path in old:
                del self._finished[path]
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
        return len(old)

    def close(self) -> None:
        with self._lock:
            root, self._root = self._root, None
            self._finished.clear()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def remove_orphans(self) -> None:
        """Remove roots whose process is gone (killed before it could clean up)."""
        for candidate in self.parent.glob(f"{self.PREFIX}*"):
            pid_text = candidate.name[len(self.PREFIX):].split("-", 1)[0]
            if candidate.is_dir() and pid_text.isdigit() and not _process_alive(int(pid_text)):
                shutil.rmtree(candidate, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
