"""Snapshots into a folder that outlives the machine, and restoring them into a fresh one."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from annotation_support import assert_restored_keeps, case_with_prediction, table_rows
from medclipseg.annotation import snapshots
from medclipseg.annotation.store import AnnotationStore


def _case(store, seed):
    return case_with_prediction(store, seed)[0]


def _mask(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((24, 32)) > 0.6



def test_a_restored_snapshot_holds_everything_acknowledged_before_it(tmp_path):
    live, bucket = tmp_path / "disk" / "annotations.db", tmp_path / "bucket"
    with AnnotationStore(live) as store:
        cases = [_case(store, seed) for seed in range(5)]
        for index, case in enumerate(cases[:3]):
            store.save_correction(case.id, _mask(index), annotator="alice")
        store.save_correction(cases[0].id, _mask(10), annotator="bob")  # version 2
        store.save_draft(cases[3].id, "carol", _mask(20))
        taken = snapshots.take_snapshot(live, bucket)
        acknowledged = {table: table_rows(live, table) for table in ("cases", "predictions", "corrections", "drafts")}
        masks = {row["id"]: store.load_mask(row["mask_path"]) for row in store.corrections(latest_only=False)}
        store.save_correction(cases[4].id, _mask(30), annotator="alice")  # after the snapshot: may be lost
    assert taken.path.parent == bucket / "snapshots" and taken.files_copied > 0

    fresh = tmp_path / "new-machine" / "annotations.db"  # a fresh container: nothing on its disk
    assert snapshots.restore(fresh, bucket) == taken.path
    assert_restored_keeps(fresh, acknowledged, masks, {(cases[3].id, "carol"): _mask(20)})
    with AnnotationStore(fresh) as restored:
        for case in cases:
            assert restored.load_image(case.id).shape == (24, 32, 3)
        assert restored.counts()["corrected"] == 3  # the save after the snapshot is the bounded loss


def test_snapshots_taken_while_annotators_save_restore_whole(tmp_path):
    """Saves go on in two threads while snapshots are taken; every snapshot restores into a database
    whose every version has its mask, holding every save acknowledged before the snapshot began."""
    live, bucket = tmp_path / "disk" / "annotations.db", tmp_path / "bucket"
    with AnnotationStore(live) as store:
        cases = [_case(store, seed) for seed in range(40)]
        acknowledged, stop = [], threading.Event()

        def annotate(name, offset):
            for step in range(200):
                if stop.is_set():
                    return
                case = cases[(offset + step) % len(cases)]
                store.save_draft(case.id, name, _mask(step))
                saved = store.save_correction(case.id, _mask(step + 1), annotator=name)
                acknowledged.append((time.monotonic(), saved.id))

        workers = [threading.Thread(target=annotate, args=(name, offset)) for name, offset in (("a", 0), ("b", 20))]
        for worker in workers:
            worker.start()
        taken = []
        try:
            for _ in range(4):
                time.sleep(0.2)
                began = time.monotonic()
                taken.append((began, snapshots.take_snapshot(live, bucket, keep=10).path))
        finally:
            stop.set()
            for worker in workers:
                worker.join()
    for index, (began, path) in enumerate(taken):
        fresh = tmp_path / f"machine-{index}" / "annotations.db"
        folder = tmp_path / f"bucket-{index}"
        (folder / "snapshots").mkdir(parents=True)
        (folder / "snapshots" / path.name).write_bytes(path.read_bytes())
        (folder / "files").symlink_to(bucket / "files")
        assert snapshots.restore(fresh, folder) is not None
        with AnnotationStore(fresh) as restored:
            assert restored.integrity_check() == "ok"
            ids = {row["id"] for row in restored.corrections(latest_only=False)}
            assert {saved for when, saved in acknowledged if when < began} <= ids
            for row in restored.corrections(latest_only=False):
                restored.load_mask(row["mask_path"])  # every version's mask is there


def test_restore_never_replaces_a_live_database_and_skips_a_broken_snapshot(tmp_path):
    live, bucket = tmp_path / "disk" / "annotations.db", tmp_path / "bucket"
    with AnnotationStore(live) as store:
        case = _case(store, 1)
        store.save_correction(case.id, _mask(1), annotator="alice")
        good = snapshots.take_snapshot(live, bucket).path
    assert snapshots.restore(live, bucket) is None  # the live database stays
    broken = bucket / "snapshots" / "annotations-29991231T235959000000Z.db"
    broken.write_bytes(b"not a database" * 100)
    fresh = tmp_path / "fresh" / "annotations.db"
    assert snapshots.restore(fresh, bucket) == good
    with AnnotationStore(fresh) as restored:
        assert restored.counts()["corrected"] == 1
    assert snapshots.restore(tmp_path / "other" / "annotations.db", tmp_path / "empty-bucket") is None


def test_only_the_newest_snapshots_are_kept_and_a_legacy_database_in_the_bucket_is_taken(tmp_path):
    live, bucket = tmp_path / "disk" / "annotations.db", tmp_path / "bucket"
    with AnnotationStore(live) as store:
        _case(store, 1)
        for _ in range(4):
            snapshots.take_snapshot(live, bucket, keep=2)
    assert len(snapshots.snapshot_names(bucket, "annotations")) == 2
    # Earlier releases advised the live database in /data itself: it is taken over once.
    old_bucket = tmp_path / "data"
    with AnnotationStore(old_bucket / "annotations.db") as old:
        case = _case(old, 2)
        old.save_correction(case.id, _mask(2), annotator="alice")
    fresh = tmp_path / "container" / "annotations.db"
    assert snapshots.restore(fresh, old_bucket) == old_bucket / "annotations.db"
    with AnnotationStore(fresh) as restored:
        (row,) = restored.corrections()
        np.testing.assert_array_equal(restored.load_mask(row["mask_path"]), _mask(2))


def test_the_snapshotter_takes_one_at_stop_and_reports_a_missing_bucket_in_words(tmp_path):
    live = tmp_path / "disk" / "annotations.db"
    with AnnotationStore(live) as store:
        _case(store, 1)
    lines = []
    snapshotter = snapshots.Snapshotter(live, tmp_path / "bucket", interval=3600, log=lines.append).start()
    last = snapshotter.stop()
    assert last is not None and last.path.is_file() and lines == []
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the bucket should be")
    assert snapshots.Snapshotter(live, blocked, interval=3600, log=lines.append).snapshot_now() is None
    assert lines and lines[0].startswith("WARNING: Could not snapshot the annotation database")
