"""`medclipseg.annotation.database`: per-thread connections, BEGIN IMMEDIATE writes, threads and processes sharing a store."""
from __future__ import annotations

import random
import sqlite3
import threading

import numpy as np
import pytest

from annotation_support import case_with_prediction, image
from medclipseg.annotation.database import Connections
from medclipseg.annotation.queue import ACQUISITION_SCORES
from medclipseg.annotation.store import AnnotationStore, StorageError


def _table(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()


def _names(path) -> list:
    conn = sqlite3.connect(path)
    names = [row[0] for row in conn.execute("SELECT name FROM items ORDER BY id")]
    conn.close()
    return names


def test_sqlite_utils_writes_stay_inside_the_transaction(tmp_path):
    """insert/update inside write() commit with it and roll back with it; none commits on its own."""
    path = tmp_path / "t.db"
    _table(path)
    connections = Connections(path)
    with pytest.raises(RuntimeError):
        with connections.write() as db:
            row_id = db["items"].insert({"name": "first"}).last_rowid
            db["items"].update(row_id, {"name": "renamed"})
            assert _names(path) == []  # another connection sees nothing yet
            raise RuntimeError("stop")
    assert _names(path) == []
    with connections.write() as db:
        row_id = db["items"].insert({"name": "kept"}).last_rowid
        db["items"].update(row_id, {"name": "kept and renamed"})
        assert _names(path) == []
    assert _names(path) == ["kept and renamed"]
    connections.close()


def test_connections_per_thread_and_closed(tmp_path):
    path = tmp_path / "t.db"
    _table(path)
    connections = Connections(path)
    mine = connections.db()
    assert connections.db() is mine
    seen = []
    thread = threading.Thread(target=lambda: seen.append(connections.db()))
    thread.start()
    thread.join()
    assert seen[0] is not mine
    assert mine.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert mine.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    connections.close()
    with pytest.raises(StorageError, match="closed"):
        connections.db()


def test_busy_database_answers_in_words(tmp_path, monkeypatch):
    from medclipseg.annotation import database

    path = tmp_path / "t.db"
    _table(path)
    monkeypatch.setattr(database, "BUSY_TIMEOUT_S", 0.05)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    connections = Connections(path)
    try:
        with pytest.raises(StorageError, match="busy"):
            with connections.write():
                pass
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with connections.write() as db:
        db["items"].insert({"name": "after"})
    assert _names(path) == ["after"]
    connections.close()


def test_concurrent_threads_and_second_store(tmp_path):
    path = tmp_path / "annotations.db"
    store = AnnotationStore(path)
    threads_count, rounds = 8, 25
    for index in range(threads_count * rounds):
        case_with_prediction(store, 1000 + index, shape=(8, 8),
                             scores={"mean_entropy_foreground": random.Random(index).random()})
    shared = store.add_case(image(5000, (8, 8)), prompt="shared case", original_name="shared.png")
    second = AnnotationStore(path)  # like a second process
    served, errors = [], []
    barrier = threading.Barrier(threads_count)

    def work(worker: int) -> None:
        target = store if worker % 2 == 0 else second
        annotator = f"annotator{worker}"
        rng = np.random.default_rng(worker)
        try:
            barrier.wait()
            for _ in range(rounds):
                acquisition = str(rng.choice(list(ACQUISITION_SCORES)))
                case = target.next_case(annotator, acquisition=acquisition)
                assert case is not None and case.assigned_to == annotator
                served.append(case.id)
                target.save_correction(case.id, rng.random((8, 8)) > 0.5, annotator=annotator)
                target.save_correction(shared.id, rng.random((8, 8)) > 0.5, annotator=annotator)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    total = threads_count * rounds
    # Each served case was corrected at once, so serving one twice would mean two annotators got it.
    assert len(served) == total and len(set(served)) == total
    conn = sqlite3.connect(path)
    versions = [row[0] for row in conn.execute("SELECT version FROM corrections WHERE case_id = ? ORDER BY version",
                                               [shared.id])]
    assert versions == list(range(1, total + 1))
    assert conn.execute("SELECT count(*) FROM corrections").fetchone()[0] == 2 * total
    assert conn.execute("SELECT count(*) FROM (SELECT case_id, version FROM corrections "
                        "GROUP BY case_id, version HAVING count(*) > 1)").fetchone()[0] == 0
    conn.close()
    assert store.counts()["corrected"] == total + 1 and store.counts()["unreviewed"] == 0
    assert store.next_case("late") is None
    assert store.integrity_check() == "ok" and second.integrity_check() == "ok"
    second.close()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.counts()
