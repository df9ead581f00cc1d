"""`medclipseg.annotation.schema`: tables, indexes, schema version, migrations and databases of older versions."""
from __future__ import annotations

import contextlib
import json
import sqlite3

import cv2
import numpy as np
import pytest

from annotation_support import case_with_prediction, database_with_schema_version, image
from medclipseg.annotation.queue import ACQUISITION_SCORES
from medclipseg.annotation.schema import SCHEMA_VERSION
from medclipseg.annotation.store import AnnotationStore, StorageError


@contextlib.contextmanager
def legacy_database(path):
    """A sqlite_utils.Database on `path` inside one transaction, as the steps before Alembic ran."""
    import sqlite_utils

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield sqlite_utils.Database(conn, execute_plugins=False)
        conn.execute("COMMIT")
    finally:
        conn.close()

# Schema version 1 exactly as the first release of the store wrote it (sqlite_master of a new database).
VERSION_1_SQL = """
CREATE TABLE "meta" ("key" TEXT PRIMARY KEY, "value" TEXT);
CREATE TABLE "cases" (
   "id" INTEGER PRIMARY KEY, "content_hash" TEXT NOT NULL, "prompt" TEXT NOT NULL,
   "original_name" TEXT NOT NULL, "width" INTEGER NOT NULL, "height" INTEGER NOT NULL,
   "source" TEXT NOT NULL, "batch" TEXT, "image_path" TEXT NOT NULL,
   "metadata" TEXT NOT NULL DEFAULT '{}', "status" TEXT NOT NULL DEFAULT 'unreviewed',
   "created_at" TEXT NOT NULL, "updated_at" TEXT NOT NULL, "assigned_to" TEXT, "lease_expires" REAL,
   "random_key" REAL NOT NULL);
CREATE UNIQUE INDEX "idx_cases_content_prompt" ON "cases" ("content_hash", "prompt");
CREATE INDEX "idx_cases_status_lease" ON "cases" ("status", "lease_expires");
CREATE INDEX "idx_cases_batch" ON "cases" ("batch");
CREATE TABLE "predictions" (
   "id" INTEGER PRIMARY KEY, "case_id" INTEGER NOT NULL REFERENCES "cases"("id"), "model_id" TEXT NOT NULL,
   "prompt" TEXT NOT NULL, "threshold" REAL NOT NULL, "num_samples" INTEGER NOT NULL, "seconds" REAL,
   "created_at" TEXT NOT NULL, "maps_path" TEXT NOT NULL, "mask_path" TEXT NOT NULL, "scores" TEXT NOT NULL,
   "score_foreground_entropy" REAL, "score_boundary_entropy" REAL, "score_mutual_information" REAL,
   "score_image_entropy" REAL, "foreground_pixels" INTEGER);
CREATE INDEX "idx_predictions_case" ON "predictions" ("case_id");
CREATE INDEX "idx_predictions_score_foreground_entropy" ON "predictions" ("score_foreground_entropy");
CREATE INDEX "idx_predictions_score_boundary_entropy" ON "predictions" ("score_boundary_entropy");
CREATE INDEX "idx_predictions_score_mutual_information" ON "predictions" ("score_mutual_information");
CREATE INDEX "idx_predictions_score_image_entropy" ON "predictions" ("score_image_entropy");
CREATE TABLE "corrections" (
   "id" INTEGER PRIMARY KEY, "case_id" INTEGER NOT NULL REFERENCES "cases"("id"),
   "prediction_id" INTEGER REFERENCES "predictions"("id"), "version" INTEGER NOT NULL,
   "annotator" TEXT NOT NULL, "prompt" TEXT NOT NULL, "status" TEXT NOT NULL, "mask_path" TEXT NOT NULL,
   "predicted_mask_path" TEXT NOT NULL, "pixels_added" INTEGER NOT NULL, "pixels_erased" INTEGER NOT NULL,
   "pixels_changed" INTEGER NOT NULL, "threshold" REAL, "model_id" TEXT, "scores" TEXT,
   "created_at" TEXT NOT NULL);
CREATE UNIQUE INDEX "idx_corrections_case_version" ON "corrections" ("case_id", "version");
CREATE INDEX "idx_corrections_case" ON "corrections" ("case_id");
CREATE INDEX "idx_corrections_annotator" ON "corrections" ("annotator");
INSERT INTO meta VALUES ('schema_version', '1');
"""


def test_schema_created_in_wal_mode(tmp_path):
    path = tmp_path / "sub" / "annotations.db"
    with AnnotationStore(path) as store:
        assert store.path == path and path.is_file()
        assert store.files_dir == tmp_path / "sub" / "annotations_files"
        assert all((store.files_dir / sub).is_dir() for sub in ("images", "maps", "masks"))
        assert store.schema_version == SCHEMA_VERSION == 10
        assert store.integrity_check() == "ok"
        assert store.counts() == {"unreviewed": 0, "corrected": 0, "accepted": 0, "skipped": 0,
                                  "corrections": 0, "predictions": 0}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meta", "cases", "predictions", "corrections", "model_versions", "promotions", "jobs", "drafts"} <= tables
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert len(indexes) >= 10
    columns = {row[1] for row in conn.execute("PRAGMA table_info(cases)")}
    assert set(ACQUISITION_SCORES.values()) <= columns
    assert {f"idx_queue_{column}" for column in ACQUISITION_SCORES.values()} <= indexes
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    conn.close()


def test_version_1_database_migrates_to_the_new_layout(tmp_path):
    """A version 1 database, once opened, has the tables and indexes of a new one, column for column."""
    written = sqlite3.connect(tmp_path / "written.db")
    written.executescript(VERSION_1_SQL)
    written.close()
    AnnotationStore(tmp_path / "written.db").close()
    written = sqlite3.connect(tmp_path / "written.db")
    AnnotationStore(tmp_path / "new.db").close()
    made = sqlite3.connect(tmp_path / "new.db")

    def layout(conn):
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index') "
                                                "AND name NOT LIKE 'sqlite_%'")]
        # A primary key column is NOT NULL whether or not its DDL says so (SQLAlchemy writes it).
        # REAL and FLOAT are one affinity (the first release wrote REAL, sqlite-utils later FLOAT).
        return {name: ([(cid, column, kind.replace("REAL", "FLOAT"), int(bool(notnull or pk)), default, pk) for cid, column, kind, notnull, default, pk
                        in conn.execute(f'PRAGMA table_info("{name}")').fetchall()]
                       or conn.execute(f'PRAGMA index_info("{name}")').fetchall()) for name in names}

    assert layout(made) == layout(written)
    written.close()
    made.close()


def test_reopen_keeps_data(tmp_path):
    path = tmp_path / "annotations.db"
    with AnnotationStore(path) as store:
        case, _ = case_with_prediction(store, 1)
    with AnnotationStore(path) as again:
        assert again.get_case(case.id) == case
        assert again.counts()["predictions"] == 1
        np.testing.assert_array_equal(again.load_image(case.id), image(1))


def test_existing_version_1_database_opens(tmp_path):
    """A database and files as version 1 wrote them open in this store, are read and take new writes."""
    path = tmp_path / "annotations.db"
    conn = sqlite3.connect(path)
    conn.executescript(VERSION_1_SQL)
    files = tmp_path / "annotations_files"
    for sub in ("images", "maps", "masks"):
        (files / sub).mkdir(parents=True)
    pixels = image(40)
    cv2.imwrite(str(files / "images" / "abc.png"), pixels)
    probability = np.full((24, 32), 0.2, np.float32)
    probability[4:12, 6:20] = 0.9
    entropy = np.full((24, 32), 0.1, np.float16)
    np.savez_compressed(files / "maps" / "p1.npz", probability=probability, entropy=entropy,
                        mutual_information=entropy)
    cv2.imwrite(str(files / "masks" / "p1-predicted.png"), (probability > 0.5).astype(np.uint8) * 255)
    conn.execute("INSERT INTO cases (id, content_hash, prompt, original_name, width, height, source, batch, "
                 "image_path, metadata, status, created_at, updated_at, random_key) VALUES (1, 'abc', 'a lesion', "
                 "'old.png', 32, 24, 'upload', 'week1', 'images/abc.png', ?, 'unreviewed', '2026-01-01T00:00:00Z', "
                 "'2026-01-01T00:00:00Z', 0.5)", [json.dumps({"modality": "CT"})])
    conn.execute("INSERT INTO predictions (id, case_id, model_id, prompt, threshold, num_samples, seconds, "
                 "created_at, maps_path, mask_path, scores, score_foreground_entropy, foreground_pixels) VALUES "
                 "(1, 1, 'old-model', 'a lesion', 0.5, 4, 0.1, '2026-01-01T00:00:00Z', 'maps/p1.npz', "
                 "'masks/p1-predicted.png', ?, 0.3, 112)",
                 [json.dumps({"mean_entropy_foreground": 0.3, "boundary_band_px": 2})])
    conn.commit()
    conn.close()

    with AnnotationStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION and store.integrity_check() == "ok"
        case = store.get_case(1)
        assert (case.original_name, case.batch, case.metadata, case.status) == ("old.png", "week1",
                                                                                {"modality": "CT"}, "unreviewed")
        np.testing.assert_array_equal(store.load_image(1), pixels)
        loaded = store.load_prediction(1)
        np.testing.assert_array_equal(loaded.mask, probability > 0.5)
        assert loaded.model_id == "old-model" and store.latest_prediction_id(1) == 1
        assert store.next_case("alice").id == 1
        saved = store.save_correction(1, np.zeros((24, 32), bool), annotator="alice")
        assert (saved.version, saved.pixels_erased) == (1, 112)
        assert store.counts()["corrected"] == 1


@pytest.mark.parametrize("recorded, message", [
    (str(SCHEMA_VERSION + 1), f"schema version {SCHEMA_VERSION + 1}, newer"),
    ("seven", "unreadable schema version"),
], ids=["newer", "unreadable"])
def test_schema_version_refused(tmp_path, recorded, message):
    path = database_with_schema_version(tmp_path / "annotations.db", recorded)
    with pytest.raises(StorageError, match=message):
        AnnotationStore(path)


def test_migration_from_version_zero(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '0')")
    conn.commit()
    conn.close()
    with AnnotationStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        case, _ = case_with_prediction(store, 2)
        assert store.get_case(case.id).status == "unreviewed"


def test_not_a_database(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not sqlite " * 100)
    with pytest.raises(StorageError, match="Could not"):
        AnnotationStore(path)


def _version_2_database(path, files):
    """A database made by the version 2 steps, holding one case, its prediction and two saved versions."""
    from medclipseg.annotation.schema import MIGRATIONS

    with legacy_database(path) as db:
        db["meta"].create({"key": str, "value": str}, pk="key")
        for step in MIGRATIONS[:2]:
            step(db)
        db["meta"].insert({"key": "schema_version", "value": "2"})
    for sub in ("images", "maps", "masks"):
        (files / sub).mkdir(parents=True)
    cv2.imwrite(str(files / "images" / "abc.png"), image(41))
    probability = np.full((24, 32), 0.2, np.float32)
    probability[4:12, 6:20] = 0.9
    np.savez_compressed(files / "maps" / "p1.npz", probability=probability,
                        entropy=np.full((24, 32), 0.1, np.float16), mutual_information=np.zeros((24, 32), np.float16))
    predicted = (probability > 0.5).astype(np.uint8) * 255
    for name in ("p1-predicted", "c1-corrected", "c2-corrected"):
        cv2.imwrite(str(files / "masks" / f"{name}.png"), predicted)
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO cases (id, content_hash, prompt, original_name, width, height, source, image_path, "
                 "metadata, status, created_at, updated_at, random_key) VALUES (1, 'abc', 'a lesion', 'old.png', "
                 "32, 24, 'upload', 'images/abc.png', '{}', 'corrected', '2026-01-01T00:00:00+00:00', "
                 "'2026-01-01T00:00:00+00:00', 0.5)")
    conn.execute("INSERT INTO predictions (id, case_id, model_id, prompt, threshold, num_samples, created_at, "
                 "maps_path, mask_path, scores) VALUES (1, 1, 'old-model', 'a lesion', 0.5, 4, "
                 "'2026-01-01T00:00:00+00:00', 'maps/p1.npz', 'masks/p1-predicted.png', '{}')")
    for version, who in ((1, "alice"), (2, "bob")):
        conn.execute("INSERT INTO corrections (case_id, prediction_id, version, annotator, prompt, status, mask_path, "
                     "predicted_mask_path, pixels_added, pixels_erased, pixels_changed, threshold, model_id, "
                     "created_at) VALUES (1, 1, ?, ?, 'a lesion', 'corrected', ?, 'masks/p1-predicted.png', "
                     "0, 0, 0, 0.5, 'old-model', ?)",
                     [version, who, f"masks/c{version}-corrected.png", f"2026-01-0{version}T00:00:00+00:00"])
    conn.commit()
    conn.close()
    return predicted > 0


def test_version_2_database_gets_drafts_and_lineage(tmp_path):
    """A version 2 database opens at the latest version: drafts table, replaces_version filled in, old rows readable."""
    path = tmp_path / "annotations.db"
    predicted = _version_2_database(path, tmp_path / "annotations_files")
    with AnnotationStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION and store.integrity_check() == "ok"
        history = store.case_history(1)
        assert [(row["version"], row["annotator"], row["replaces_version"]) for row in history] == [
            (1, "alice", None), (2, "bob", 1)]
        latest = store.latest_correction(1)
        assert (latest["version"], latest["annotator"], latest["model_id"]) == (2, "bob", "old-model")
        np.testing.assert_array_equal(store.load_mask(latest["mask_path"]), predicted)
        assert [row["version"] for row in store.corrections(latest_only=False)] == [1, 2]
        assert store.draft(1, "carol") is None
        draft = store.save_draft(1, "carol", predicted, prediction_id=1, base_version=2)
        np.testing.assert_array_equal(store.draft(1, "carol").mask, predicted)
        assert draft.revision == 1
        saved = store.save_correction(1, ~predicted, annotator="carol", base_version=2)
        assert (saved.version, saved.replaces_version) == (3, 2)
        assert store.draft(1, "carol") is None
    conn = sqlite3.connect(path)
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "idx_drafts_case_annotator" in indexes
    conn.close()


def _version_1_database_with_case(tmp_path, scores: dict):
    """The frozen version 1 layout (VERSION_1_SQL) holding one case named like a slice, its image and
    one prediction with `scores`."""
    path = tmp_path / "annotations.db"
    conn = sqlite3.connect(path)
    conn.executescript(VERSION_1_SQL)
    files = tmp_path / "annotations_files"
    for sub in ("images", "maps", "masks"):
        (files / sub).mkdir(parents=True)
    cv2.imwrite(str(files / "images" / "abc.png"), image(40))
    probability = np.full((24, 32), 0.2, np.float32)
    np.savez_compressed(files / "maps" / "p1.npz", probability=probability,
                        entropy=np.full((24, 32), 0.1, np.float16), mutual_information=np.zeros((24, 32), np.float16))
    cv2.imwrite(str(files / "masks" / "p1-predicted.png"), np.zeros((24, 32), np.uint8))
    conn.execute("INSERT INTO cases (id, content_hash, prompt, original_name, width, height, source, batch, "
                 "image_path, metadata, status, created_at, updated_at, random_key) VALUES (1, 'abc', 'a lesion', "
                 "'ct_slice_017.png', 32, 24, 'upload', NULL, 'images/abc.png', '{}', 'unreviewed', "
                 "'2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', 0.5)")
    conn.execute("INSERT INTO predictions (id, case_id, model_id, prompt, threshold, num_samples, seconds, "
                 "created_at, maps_path, mask_path, scores, foreground_pixels) VALUES (1, 1, 'old-model', 'a lesion', "
                 "0.5, 4, 0.1, '2026-01-01T00:00:00Z', 'maps/p1.npz', 'masks/p1-predicted.png', ?, 0)",
                 [json.dumps(scores)])
    conn.commit()
    conn.close()
    return path


def test_version_1_database_gets_diversity_fields(tmp_path):
    """Version 4: source and slice read from the file name at migration; the image fingerprint filled
    from the image file afterwards, equal to one computed directly from the pixels."""
    from medclipseg.annotation.diversity import image_descriptor

    path = _version_1_database_with_case(tmp_path, {"band_entropy": 0.4})
    with AnnotationStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        row = sqlite3.connect(path).execute("SELECT source_key, slice_index, descriptor FROM cases").fetchone()
        assert row == ("ct_slice_#", 17, None)
        assert store.fill_descriptors() == 1 and store.fill_descriptors() == 0
        stored = sqlite3.connect(path).execute("SELECT descriptor FROM cases").fetchone()[0]
        assert stored == image_descriptor(image(40))


def test_adding_an_acquisition_needs_no_migration(tmp_path, monkeypatch):
    """CONTRIBUTING's recipe (a new entry in ACQUISITIONS) must not break old or new databases: the old
    migrations read their own frozen columns, and the new rank column is added, indexed and filled
    from the stored scores when a database opens."""
    from medclipseg.annotation import queue

    new = queue.Acquisition("rank_top5_entropy", "top5_entropy", "Mean entropy of the 5 % most uncertain pixels")
    monkeypatch.setitem(queue.ACQUISITIONS, "top5_entropy", new)
    monkeypatch.setitem(queue.ACQUISITION_SCORES, "top5_entropy", new.column)
    monkeypatch.setitem(queue.RANKED_BY_MODEL, new.column, new.score_key)

    # A migration does what it did when it was written, whatever the acquisition list says today.
    from medclipseg.annotation.schema import MIGRATIONS

    with legacy_database(tmp_path / "steps.db") as db:
        db["meta"].create({"key": str, "value": str}, pk="key")
        for step in MIGRATIONS[:2]:
            step(db)
        assert "rank_top5_entropy" not in {column.name for column in db["cases"].columns}

    old = tmp_path / "old"
    old.mkdir()
    path = _version_1_database_with_case(old, {"band_entropy": 0.4, "top5_entropy": 0.7})
    with AnnotationStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION and store.integrity_check() == "ok"
        assert store.next_case("alice", acquisition="top5_entropy").id == 1
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT rank_top5_entropy FROM cases WHERE id = 1").fetchone()[0] == pytest.approx(0.7)
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'idx_queue_rank_top5_entropy'").fetchone()[0]
    conn.close()

    with AnnotationStore(tmp_path / "new.db") as store:  # a new database gets the column as well
        case, _ = case_with_prediction(store, 3)
        assert store.next_case("bob", acquisition="top5_entropy").id == case.id
