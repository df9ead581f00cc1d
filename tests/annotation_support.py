"""Shared by the annotation store tests: small images, hand-built Predictions, a store fixture."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from app_support import prediction_from_probability
from medclipseg.annotation.store import AnnotationStore
from postgres_support import ENGINES

# Scores per case (foreground, boundary, mutual information, image): every order differs.
QUEUE_SCORES = [(0.1, 0.4, 0.3, 0.2), (0.4, 0.1, 0.2, 0.3), (0.3, 0.2, 0.1, 0.4), (0.2, 0.3, 0.4, 0.1)]
SCORE_KEYS = ("mean_entropy_foreground", "mean_entropy_boundary", "mean_mutual_information", "mean_entropy")


def image(seed: int, shape=(24, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def prediction(shape=(24, 32), seed: int = 0, prompt: str = "a round lesion", scores=None, threshold: float = 0.5):
    """A real Prediction built by hand; probabilities avoid 0.3 and 0.5 so float16 storage cannot flip masks."""
    rng = np.random.default_rng(seed)
    probability = rng.choice(np.array([0.05, 0.2, 0.4, 0.6, 0.8, 0.95], np.float32), size=shape).astype(np.float32)
    return prediction_from_probability(probability, mutual_fraction=rng.uniform(0.1, 0.5, size=shape),
                                       threshold=threshold, prompt=prompt, model_id="test-model", num_samples=4,
                                       seconds=0.01, scores=scores,
                                       conversions=["grey image replicated to 3 channels"])


def case_with_prediction(store, seed, *, prompt="a round lesion", scores=None, batch=None, shape=(24, 32)):
    case = store.add_case(image(seed, shape), prompt=prompt, original_name=f"img_{seed}.png", batch=batch)
    prediction_id = store.add_prediction(case.id, prediction(shape, seed, prompt, scores))
    return case, prediction_id


def database_with_schema_version(path, value: str):
    """A new store's database at ``path`` whose recorded schema version is then set to ``value``."""
    AnnotationStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (value,))
    conn.commit()
    conn.close()
    return path


def box(top, left, height=10, width=12, shape=(24, 32)) -> np.ndarray:
    """A boolean mask holding one rectangle."""
    mask = np.zeros(shape, bool)
    mask[top:top + height, left:left + width] = True
    return mask


def dice(a, b) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def table_rows(path, table) -> list:
    """Every row of an SQLite file's table, by id."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f'SELECT * FROM "{table}" ORDER BY id').fetchall()
    finally:
        conn.close()


def assert_restored_keeps(path, acknowledged: dict, masks: dict, drafts: dict) -> None:
    """The database restored at `path` is sound and holds every row acknowledged before its snapshot
    ({table: rows}), every version's mask ({correction id: mask}) and drafts ({(case, annotator): mask})."""
    with AnnotationStore(path) as restored:
        assert restored.integrity_check() == "ok"
        for table, rows in acknowledged.items():
            assert table_rows(path, table) == rows, table
        for row in restored.corrections(latest_only=False):
            np.testing.assert_array_equal(restored.load_mask(row["mask_path"]), masks[row["id"]])
        for (case_id, annotator), mask in drafts.items():
            np.testing.assert_array_equal(restored.draft(case_id, annotator).mask, mask)


def stored_files(store) -> list:
    return sorted(p for p in store.files_dir.rglob("*") if p.is_file())


def fill_scored_queue(store, count=4, batch=None, offset=0) -> list:
    """`count` cases whose predictions carry QUEUE_SCORES (cycled), so each acquisition order differs."""
    cases = []
    for index in range(count):
        scores = dict(zip(SCORE_KEYS, QUEUE_SCORES[index % 4]))
        case, _ = case_with_prediction(store, 100 + offset + index, scores=scores, batch=batch)
        cases.append(case)
    return cases


@pytest.fixture(params=ENGINES)
def engine(request):
    """Each engine the store runs on: "sqlite", and "postgresql" where a server is at hand."""
    return request.param


@pytest.fixture()
def store_location(engine, tmp_path, request):
    """Where a new store of this engine lives: an SQLite file in the test's folder, or a new PostgreSQL
    database (dropped after the test)."""
    if engine == "sqlite":
        return tmp_path / "annotations.db"
    return request.getfixturevalue("postgres_database")


@pytest.fixture()
def store(store_location, tmp_path):
    """A new store on each engine; import this name into a test module to use it."""
    store = AnnotationStore(store_location, files_dir=tmp_path / "annotations_files")
    yield store
    store.close()


def run_sql(store, sql: str, params=None) -> list:
    """Run one statement in a write transaction of the store's own database (either engine): the
    tests' way to look at rows or to damage them; rows as dicts."""
    with store._connections.write() as db:
        result = db.execute(sql, params)
        return [dict(row) for row in result.mappings()] if result.returns_rows else []


class _Rows:
    def __init__(self, rows):
        self._rows = rows

    def fetchall(self):
        return list(self._rows)

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def __iter__(self):
        return iter(self._rows)


class SqlConnection:
    """A sqlite3-like view of the store's own database on either engine (``execute(...).fetchall()``,
    rows as tuples), each statement its own write transaction."""

    def __init__(self, store):
        self.store = store

    def execute(self, sql: str, params=()):
        with self.store._connections.write() as db:
            result = db.execute(sql, list(params))
            return _Rows([tuple(row) for row in result] if result.returns_rows else [])

    def commit(self):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def sql_connection(store) -> SqlConnection:
    return SqlConnection(store)
