"""Shared by the annotation store tests: small images, hand-built Predictions, a store fixture."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from app_support import prediction_from_probability
from medclipseg.annotation.store import AnnotationStore

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


@pytest.fixture()
def store(tmp_path):
    """A new store in the test's folder; import this name into a test module to use it."""
    store = AnnotationStore(tmp_path / "annotations.db")
    yield store
    store.close()
