"""`medclipseg.annotation.sql`: per-thread connections, one writer at a time, threads and processes
sharing a store, on SQLite and on a real PostgreSQL server; a wrong database URL refused in words."""
from __future__ import annotations

import contextlib
import random
import sqlite3
import threading

import numpy as np
import pytest

from annotation_support import case_with_prediction, image, sql_connection
from medclipseg.annotation import sql
from medclipseg.annotation.queue import ACQUISITION_SCORES
from medclipseg.annotation.sql import Connections
from medclipseg.annotation.store import AnnotationStore, StorageError


def _connections(store_location):
    connections = Connections(store_location)
    with connections.write() as db:
        key = "INTEGER PRIMARY KEY" if connections.dialect == "sqlite" else "SERIAL PRIMARY KEY"
        db.execute(f"CREATE TABLE items (id {key}, name TEXT)")
    return connections


def _names(store_location) -> list:
    """The names another connection sees (committed rows only)."""
    other = Connections(store_location)
    try:
        return [row["name"] for row in other.db().query("SELECT name FROM items ORDER BY id")]
    finally:
        other.close()


def test_writes_stay_inside_the_transaction(store_location):
    """insert/update inside write() commit with it and roll back with it; none commits on its own."""
    connections = _connections(store_location)
    with pytest.raises(RuntimeError):
        with connections.write() as db:
            row_id = db["items"].insert({"name": "first"}).last_rowid
            db["items"].update(row_id, {"name": "renamed"})
            assert _names(store_location) == []  # another connection sees nothing yet
            raise RuntimeError("stop")
    assert _names(store_location) == []
    with connections.write() as db:
        row_id = db["items"].insert({"name": "kept"}).last_rowid
        db["items"].update(row_id, {"name": "kept and renamed"})
        assert db["items"].get(row_id)["name"] == "kept and renamed"
        assert _names(store_location) == []
    assert _names(store_location) == ["kept and renamed"]
    with pytest.raises(sql.RowNotFound):
        connections.db()["items"].get(999)
    connections.close()


def test_connections_per_thread_and_closed(store_location):
    connections = _connections(store_location)
    mine = connections.db()
    assert connections.db().conn is mine.conn
    seen = []
    thread = threading.Thread(target=lambda: seen.append(connections.db()))
    thread.start()
    thread.join()
    assert seen[0].conn is not mine.conn
    if connections.dialect == "sqlite":
        assert mine.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
        assert mine.query("PRAGMA busy_timeout")[0]["timeout"] == 30000
    connections.close()
    with pytest.raises(StorageError, match="closed"):
        connections.db()


def test_busy_database_answers_in_words(store_location, monkeypatch):
    """A writer waiting longer than the timeout (another process holds the write lock) gets words."""
    connections = _connections(store_location)
    monkeypatch.setattr(sql, "BUSY_TIMEOUT_S", 0.05)
    waiter = Connections(store_location)
    with contextlib.ExitStack() as held:
        if waiter.dialect == "sqlite":  # another process's BEGIN IMMEDIATE on the file
            other = sqlite3.connect(store_location, isolation_level=None)
            held.callback(other.close)
            other.execute("BEGIN IMMEDIATE")
            held.callback(other.execute, "ROLLBACK")
        else:  # another server's write transaction (its advisory lock)
            holder = Connections(store_location)
            held.callback(holder.close)
            held.enter_context(holder.write())
        with pytest.raises(StorageError, match="busy"):
            with waiter.write():
                pass
    waiter.close()
    with connections.write() as db:
        db["items"].insert({"name": "after"})
    assert _names(store_location) == ["after"]
    connections.close()


@pytest.mark.parametrize("url, words", [
    ("postgresql://nobody:secret@127.0.0.1:1/annotations", "Could not connect to the PostgreSQL database"),
    ("postgresql://nobody:secret@/annotations", "names no host"),
    ("postgresql://nobody:secret@db.example:5432", "names no database"),
    ("postgresql://nobody:secret@db.example:port/annotations", "port that is not a number"),
    ("mysql://nobody:secret@db.example/annotations", "neither an SQLite file nor a PostgreSQL URL"),
])
def test_a_wrong_database_url_is_refused_in_words_and_its_password_never_shown(url, words, tmp_path):
    with pytest.raises(StorageError, match=words) as raised:
        AnnotationStore(url, files_dir=tmp_path / "files")
    assert "secret" not in str(raised.value)
    assert not (tmp_path / "files").exists()  # nothing made for a database that was never opened


def test_wrong_postgres_credentials_and_database_are_refused_in_words(postgres_database, tmp_path):
    from urllib.parse import urlsplit

    parts = urlsplit(postgres_database)
    wrong_password = postgres_database.replace(f":{parts.password}@", ":not-the-password@")
    with pytest.raises(StorageError, match="Could not connect to the PostgreSQL database") as raised:
        AnnotationStore(wrong_password, files_dir=tmp_path / "files")
    assert "not-the-password" not in str(raised.value) and "password" in str(raised.value)
    missing = postgres_database.rsplit("/", 1)[0] + "/no_such_database_here"
    with pytest.raises(StorageError, match="no_such_database_here"):
        AnnotationStore(missing, files_dir=tmp_path / "files")


def test_concurrent_threads_and_second_store(store_location, tmp_path):
    path = store_location
    store = AnnotationStore(path, files_dir=tmp_path / "files")
    threads_count, rounds = 8, 25
    for index in range(threads_count * rounds):
        case_with_prediction(store, 1000 + index, shape=(8, 8),
                             scores={"mean_entropy_foreground": random.Random(index).random()})
    shared = store.add_case(image(5000, (8, 8)), prompt="shared case", original_name="shared.png")
    second = AnnotationStore(path, files_dir=tmp_path / "files")  # like a second process
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
    conn = sql_connection(store)
    versions = [row[0] for row in conn.execute("SELECT version FROM corrections WHERE case_id = ? ORDER BY version",
                                               [shared.id])]
    assert versions == list(range(1, total + 1))
    assert conn.execute("SELECT count(*) FROM corrections").fetchone()[0] == 2 * total
    assert conn.execute("SELECT count(*) FROM (SELECT case_id, version FROM corrections "
                        "GROUP BY case_id, version HAVING count(*) > 1) AS twice").fetchone()[0] == 0
    conn.close()
    assert store.counts()["corrected"] == total + 1 and store.counts()["unreviewed"] == 0
    assert store.next_case("late") is None
    assert store.integrity_check() == "ok" and second.integrity_check() == "ok"
    second.close()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.counts()


def test_a_lost_postgres_connection_answers_in_words_and_the_next_call_reconnects(postgres_database, tmp_path):
    import psycopg

    store = AnnotationStore(postgres_database, files_dir=tmp_path / "files")
    try:
        case, _ = case_with_prediction(store, 1)
        pid = store._connections.db().query("SELECT pg_backend_pid() AS pid")[0]["pid"]
        with psycopg.connect(postgres_database, autocommit=True) as admin:  # the server drops this thread's session
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(StorageError, match="could not be reached"):
            store.get_case(case.id)
        assert store.get_case(case.id) == case  # a new connection
        assert store.next_case("alice").id == case.id
    finally:
        store.close()
