"""Snapshots into a Hub dataset (hf://datasets/...), through huggingface_hub's own client, against a
small Hub on 127.0.0.1 (tests/hub_stand_in.py), and restoring them into a fresh machine."""
from __future__ import annotations

import io
import sqlite3
import time

import numpy as np
import pytest

from annotation_support import assert_restored_keeps, case_with_prediction, table_rows
from hub_stand_in import HubStandIn
from medclipseg.annotation import hub_snapshots, snapshots
from medclipseg.annotation.errors import StorageError
from medclipseg.annotation.store import AnnotationStore

TARGET = "hf://datasets/team/annotation-snapshots/space-a"


@pytest.fixture
def hub(monkeypatch):
    with HubStandIn() as stand_in:
        monkeypatch.setenv("HF_ENDPOINT", stand_in.endpoint)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield stand_in


def _mask(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((24, 32)) > 0.6



def _database_in(data: bytes, tmp_path, name: str):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_addresses_are_parsed_and_malformed_ones_refused_in_words():
    assert hub_snapshots.parse_target("hf://datasets/team/snaps") == hub_snapshots.HubDataset("team/snaps")
    assert hub_snapshots.parse_target("hf://datasets/team/snaps@backup/a/b") == hub_snapshots.HubDataset(
        "team/snaps", "backup", "a/b")
    assert hub_snapshots.parse_target("hf://datasets/team/snaps/a").uri == "hf://datasets/team/snaps/a"
    for bad, words in (("hf://team/snaps", "not a Hub dataset"), ("hf://datasets/team", "names no repository"),
                       ("hf://datasets/team/snaps@", "empty branch"), ("hf://datasets/team/snaps/../x", "not a valid")):
        with pytest.raises(ValueError, match=words):
            hub_snapshots.parse_target(bad)


def test_a_restored_hub_snapshot_holds_everything_acknowledged_before_it(tmp_path, hub):
    live = tmp_path / "disk" / "annotations.db"
    with AnnotationStore(live) as store:
        cases = [case_with_prediction(store, seed)[0] for seed in range(4)]
        for index, case in enumerate(cases[:2]):
            store.save_correction(case.id, _mask(index), annotator="alice")
        store.save_correction(cases[0].id, _mask(10), annotator="bob")
        store.save_draft(cases[2].id, "carol", _mask(20))
        taken = snapshots.take_snapshot(live, TARGET)
        acknowledged = {table: table_rows(live, table) for table in ("cases", "predictions", "corrections", "drafts")}
        masks = {row["id"]: store.load_mask(row["mask_path"]) for row in store.corrections(latest_only=False)}
        local_files = {path.relative_to(live.parent / "annotations_files").as_posix(): path.read_bytes()
                       for path in (live.parent / "annotations_files").rglob("*") if path.is_file()}
        store.save_correction(cases[3].id, _mask(30), annotator="alice")  # after the snapshot: may be lost
    held = hub.files("team/annotation-snapshots")
    assert taken.path.startswith(TARGET + "/snapshots/annotations-") and taken.files_copied == len(local_files)
    assert all(name.startswith("space-a/") for name in held)
    for relative, data in local_files.items():  # every file beside the database, byte for byte
        assert held[f"space-a/files/{relative}"] == data

    fresh = tmp_path / "new-machine" / "annotations.db"
    assert snapshots.restore(fresh, TARGET) == taken.path
    assert_restored_keeps(fresh, acknowledged, masks, {(cases[2].id, "carol"): _mask(20)})
    with AnnotationStore(fresh) as restored:
        assert restored.counts()["corrected"] == 2
    assert not list(fresh.parent.glob(".*"))  # no staging left behind
    assert snapshots.restore(fresh, TARGET) is None  # a live database is never replaced


def test_each_file_goes_up_once_and_only_the_newest_copies_stay(tmp_path, hub):
    live = tmp_path / "disk" / "annotations.db"
    with AnnotationStore(live) as store:
        case = case_with_prediction(store, 1)[0]
        first = snapshots.take_snapshot(live, TARGET, keep=2)
        second = snapshots.take_snapshot(live, TARGET, keep=2)
        before = set((live.parent / "annotations_files").rglob("*"))
        store.save_correction(case.id, _mask(1), annotator="alice")
        written = {path for path in (live.parent / "annotations_files").rglob("*") if path.is_file()} - before
        third = snapshots.take_snapshot(live, TARGET, keep=2)
    assert first.files_copied > 0 and second.files_copied == 0 and third.files_copied == len(written) > 0
    copies = sorted(name for name in hub.files("team/annotation-snapshots") if "/snapshots/" in name)
    assert [name.rsplit("/", 1)[-1] for name in copies] == [path.rsplit("/", 1)[-1] for path in (second.path,
                                                                                                  third.path)]
    assert len(hub.repos["team/annotation-snapshots"].commits) == 1 + 3  # one commit per snapshot


def test_many_new_files_go_first_and_no_commit_holds_a_copy_without_its_files(tmp_path, hub, monkeypatch):
    monkeypatch.setattr(hub_snapshots, "FILES_PER_COMMIT", 3)
    live = tmp_path / "disk" / "annotations.db"
    with AnnotationStore(live) as store:
        for seed in range(4):
            case = case_with_prediction(store, seed)[0]
            store.save_correction(case.id, _mask(seed), annotator="alice")
        snapshots.take_snapshot(live, TARGET)
    commits = hub.repos["team/annotation-snapshots"].commits
    assert len(commits) > 2  # files in batches before the copy
    for _sha, files in commits:
        for name, data in files.items():
            if "/snapshots/" not in name:
                continue
            copy = _database_in(data, tmp_path, "copy.db")
            conn = sqlite3.connect(copy)
            named = [row[0] for row in conn.execute("SELECT mask_path FROM corrections")]
            conn.close()
            assert named and all(f"space-a/files/{path}" in files for path in named)


def test_an_unreachable_or_failing_hub_is_an_error_in_words_that_changes_nothing(tmp_path, hub, monkeypatch):
    live = tmp_path / "disk" / "annotations.db"
    with AnnotationStore(live) as store:
        case_with_prediction(store, 1)
    snapshots.take_snapshot(live, TARGET)
    before = hub.files("team/annotation-snapshots")

    hub.fail_next = 100  # a Hub outage: every request answers 503
    with pytest.raises(StorageError, match="Could not snapshot the annotation database into " + TARGET):
        snapshots.take_snapshot(live, TARGET)
    fresh = tmp_path / "fresh" / "annotations.db"
    with pytest.raises(StorageError, match="Could not restore the annotation database from"):
        snapshots.restore(fresh, TARGET)
    assert not fresh.exists() and not (fresh.parent.exists() and list(fresh.parent.iterdir()))
    hub.fail_next = 0
    assert hub.files("team/annotation-snapshots") == before
    assert not list(live.parent.glob(".*.snapshot"))  # the local copy is gone

    lines = []
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    assert snapshots.Snapshotter(live, TARGET, interval=3600, log=lines.append).snapshot_now() is None
    with pytest.raises(StorageError, match="cannot be reached"):
        snapshots.restore(fresh, TARGET)  # never an empty start in place of the real database
    assert time.monotonic() - started < 15
    assert lines and lines[0].startswith("WARNING: Snapshots go to " + TARGET) and "cannot be reached" in lines[0]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StorageError, match="offline"):
        snapshots.take_snapshot(live, TARGET)


def test_a_repository_with_no_snapshot_restores_nothing(tmp_path, hub):
    assert snapshots.restore(tmp_path / "a" / "annotations.db", "hf://datasets/team/never-made") is None
    live = tmp_path / "disk" / "other.db"
    with AnnotationStore(live) as store:
        case_with_prediction(store, 1)
    snapshots.take_snapshot(live, TARGET)  # a snapshot of another database in the same place
    assert snapshots.restore(tmp_path / "b" / "annotations.db", TARGET) is None


def test_the_cli_snapshots_into_and_restores_from_a_hub_dataset(tmp_path, hub, capsys):
    from medclipseg.cli import main

    live = tmp_path / "disk" / "annotations.db"
    with AnnotationStore(live) as store:
        case = case_with_prediction(store, 1)[0]
        store.save_correction(case.id, _mask(1), annotator="alice")
    assert main(["snapshot", "--db", str(live), "--to", TARGET]) == 0
    assert f"snapshot={TARGET}/snapshots/annotations-" in capsys.readouterr().out
    fresh = tmp_path / "restored" / "annotations.db"
    assert main(["restore", "--db", str(fresh), "--from", TARGET]) == 0
    assert f"db={fresh}" in capsys.readouterr().out
    with AnnotationStore(fresh) as restored:
        (row,) = restored.corrections()
        np.testing.assert_array_equal(restored.load_mask(row["mask_path"]), _mask(1))
