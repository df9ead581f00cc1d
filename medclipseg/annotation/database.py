"""SQLite connections of the annotation store: one per thread, WAL, a busy timeout, ``BEGIN IMMEDIATE`` writes.

Many threads (Gradio workers) and many processes can share one database file:

* each thread gets its own ``sqlite3`` connection (a connection must not be used by two threads
  at once), wrapped in a ``sqlite_utils.Database``;
* WAL lets readers go on while one writer writes; ``synchronous=NORMAL`` with WAL survives a
  process crash (a commit is in the WAL before it returns);
* every write runs in :meth:`Connections.write`, which takes the write lock up front with
  ``BEGIN IMMEDIATE`` (waiting up to the busy timeout), so read-then-write steps such as
  "next version number" or "next unleased case" cannot interleave between writers.

sqlite-utils (4.0 and later) runs its own writes (``insert``, ``update``) inside an open
transaction as savepoints and commits nothing itself, so they take part in ``write()``'s
transaction; 3.x committed them on its own, hence the ``sqlite-utils>=4`` requirement.
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Iterator

from medclipseg.annotation.errors import StorageError

BUSY_TIMEOUT_S = 30.0


def open_database(path: Path):
    """A sqlite_utils.Database on a new connection to `path`, set up as the module docstring says."""
    try:
        import sqlite_utils
    except ImportError as exc:  # pragma: no cover - optional dependency of the app extra
        raise StorageError("The annotation store needs the 'sqlite-utils' package; "
                           "install medclipseg with the 'app' extra.") from exc
    try:
        # isolation_level=None: no implicit transactions; writes use an explicit BEGIN IMMEDIATE.
        # check_same_thread=False only so close() may close other threads' connections; each
        # connection is otherwise used by the thread that opened it.
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"The annotation database {path} could not be switched to WAL mode "
                               f"(journal mode is {mode}); put it on a local disk.")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        # No sqlite-utils plugins: nothing else may change how these connections behave.
        return sqlite_utils.Database(conn, execute_plugins=False)
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"Could not open the annotation database {path}: {exc}. "
                           "Check that it is an SQLite file and that the folder is writable.") from exc


_WRITE_LOCKS: dict = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(path: Path) -> "threading.RLock":
    """The in-process lock of one database file (shared by every Connections on that file)."""
    key = str(Path(path).resolve())
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(key, threading.RLock())


class Connections:
    """The per-thread connections to one database file; safe to share between threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list = []  # (weakref to thread, Database), so close() can close them all
        self._closed = False

    def db(self):
        """This thread's sqlite_utils.Database, opened on first use."""
        db = getattr(self._local, "db", None)
        if db is not None:
            return db
        if self._closed:
            raise StorageError("The annotation store has been closed; open it again.")
        db = open_database(self.path)
        self._local.db = db
        with self._lock:
            # Close connections of threads that have ended, so long-lived apps do not pile them up.
            alive = []
            for thread_ref, other in self._open:
                thread = thread_ref()
                if thread is None or not thread.is_alive():
                    with contextlib.suppress(Exception):
                        other.conn.close()
                else:
                    alive.append((thread_ref, other))
            alive.append((weakref.ref(threading.current_thread()), db))
            self._open = alive
        return db

    @contextlib.contextmanager
    def write(self) -> Iterator:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception).

        Writers of this process first queue on one lock per database file: SQLite's own busy
        handler waits by sleeping in growing steps (up to 100 ms each), so many threads contending
        for BEGIN IMMEDIATE would wait in those steps; the lock hands the write over as soon as the
        last one commits. Other processes still meet at BEGIN IMMEDIATE and the busy timeout."""
        db = self.db()
        lock = _write_lock(self.path)
        if not lock.acquire(timeout=BUSY_TIMEOUT_S):
            raise StorageError("The annotation database is busy (other writes of this server are queued); "
                               "please try again in a moment.")
        try:
            try:
                db.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StorageError(f"The annotation database is busy ({exc}); please try again in a moment.") from exc
            try:
                yield db
            except BaseException:
                if db.conn.in_transaction:
                    db.conn.execute("ROLLBACK")
                raise
            else:
                try:
                    db.conn.execute("COMMIT")
                except BaseException:
                    if db.conn.in_transaction:
                        db.conn.execute("ROLLBACK")
                    raise
        finally:
            lock.release()

    def close(self) -> None:
        """Close every connection opened here (in any thread); later use raises StorageError."""
        with self._lock:
            self._closed = True
            for _, db in self._open:
                with contextlib.suppress(Exception):
                    db.conn.close()
            self._open = []
        self._local = threading.local()
