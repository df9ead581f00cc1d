"""ByteCache: an LRU bounded in bytes; MEDCLIPSEG_CACHE_MB, the one setting that bounds the caches."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest

from medclipseg import settings
from medclipseg.annotation.byte_cache import ByteCache, size_of


def block(megabytes: float) -> np.ndarray:
    return np.zeros(int(megabytes * 1_000_000), np.uint8)


def test_least_recently_used_entries_go_first_when_the_bytes_run_over():
    cache = ByteCache(3_000_000)
    cache.put("a", block(1))
    cache.put("b", block(1))
    cache.put("c", block(1))
    assert cache.get("a") is not None          # a is now the most recent
    cache.put("d", block(1))
    assert "b" not in cache and all(key in cache for key in "acd")
    assert cache.nbytes == 3_000_000
    cache.put("e", block(2.5))
    assert [k for k in "acde" if k in cache] == ["e"] and cache.nbytes == 2_500_000


def test_an_entry_larger_than_the_budget_is_not_kept_and_replacing_a_key_recounts():
    cache = ByteCache(1_000_000)
    cache.put("small", block(0.4))
    assert cache.put("huge", block(2)) is False
    assert "huge" not in cache and "small" in cache
    cache.put("small", block(0.9))
    assert cache.nbytes == 900_000 and len(cache) == 1


def test_sizes_come_from_the_arrays_of_dataclasses_containers_and_nbytes():
    @dataclass
    class Maps:
        probability: np.ndarray
        mask: np.ndarray
        scores: dict

    value = Maps(np.zeros((10, 10), np.float32), np.zeros((10, 10), bool), {"a": 1.0, "b": np.zeros(5)})
    assert size_of(value) == 400 + 100 + 40
    base = np.zeros(1000, np.uint8)
    assert size_of(base[:10]) == 1000        # a view keeps its whole base alive

    class Held:
        nbytes = 123

    assert size_of([Held(), (Held(),)]) == 246


def test_one_loader_per_key():
    cache = ByteCache(10_000_000)
    calls = []
    started = threading.Event()

    def load():
        calls.append(1)
        started.wait(1)
        return block(1)

    threads = [threading.Thread(target=cache.get_or_load, args=("volume", load)) for _ in range(4)]
    for thread in threads:
        thread.start()
    started.set()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and "volume" in cache


def test_the_budget_is_read_at_every_insertion(monkeypatch):
    monkeypatch.setenv("MEDCLIPSEG_CACHE_MB", "8")
    assert settings.cache_bytes("predictions") == int(8_000_000 * settings.CACHE_SHARES["predictions"])
    assert sum(settings.CACHE_SHARES.values()) == pytest.approx(1.0)
    cache = ByteCache(lambda: settings.cache_bytes("predictions"))
    assert cache.put("a", block(2.5))
    monkeypatch.setenv("MEDCLIPSEG_CACHE_MB", "4")
    assert not cache.put("b", block(2.5))


@pytest.mark.parametrize("value", ["0", "-5", "lots", "nan", "inf"])
def test_a_cache_budget_that_is_not_a_positive_number_is_refused_in_words(monkeypatch, value):
    monkeypatch.setenv("MEDCLIPSEG_CACHE_MB", value)
    with pytest.raises(ValueError, match=f"MEDCLIPSEG_CACHE_MB='{value}' is not a positive number of megabytes"):
        settings.cache_mb()


def test_the_default_budget(monkeypatch):
    monkeypatch.delenv("MEDCLIPSEG_CACHE_MB", raising=False)
    assert settings.cache_mb() == settings.DEFAULT_CACHE_MB == 2048
