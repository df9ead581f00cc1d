"""A database made by the release before schema 7 (tests/data/release-schema6, written by that
release's own code: tests/data/make_release_database.py) opens in this version: every row is
kept as it was, column by column, the new columns hold what the migrations say, and it works."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from medclipseg.annotation.schema import SCHEMA_VERSION
from medclipseg.annotation.store import AnnotationStore

RELEASE = Path(__file__).parent / "data" / "release-schema6"
NEW_COLUMNS = {  # table -> {column: what the migrations put in rows that existed before}
    "promotions": {"kind": None},  # 'rollback' for the release's rollbacks, checked below
    "jobs": {"grace_until": None, "host": None},
    "corrections": {"rater": None},
    "cases": {"rater_count": None, "review_state": None, "review_version": None, "disagreement": None,
              "consensus_path": None},
}


def all_rows(path) -> dict:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: [dict(row) for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid')]
                for table in tables}
    finally:
        conn.close()


@pytest.fixture()
def release_copy(tmp_path):
    shutil.copytree(RELEASE, tmp_path / "db")
    return tmp_path / "db" / "annotations.db"


def test_every_row_of_the_release_database_survives_the_migration(release_copy):
    before = all_rows(release_copy)
    assert before["meta"] and {"key": "schema_version", "value": "6"} in before["meta"]
    with AnnotationStore(release_copy) as store:
        assert store.schema_version == SCHEMA_VERSION == 8 and store.integrity_check() == "ok"
    after = all_rows(release_copy)
    old_meta, new_meta = ({row["key"]: row["value"] for row in rows[table]} for rows in (before, after)
                          for table in ["meta"])
    assert new_meta == {**old_meta, "schema_version": str(SCHEMA_VERSION), "review_required": "0",
                        "raters_per_case": "1"}
    for table, rows in before.items():
        if table == "meta":
            continue
        assert len(after[table]) == len(rows), table
        for old, new in zip(rows, after[table]):
            assert {column: new[column] for column in old} == old, (table, old)
            added = set(new) - set(old)
            assert added <= set(NEW_COLUMNS.get(table, {})) | {column for column in new if column.startswith("rank_")}
    corrected = {row["case_id"] for row in after["corrections"]}
    for row in after["cases"]:
        assert row["rater_count"] == (1 if row["id"] in corrected else 0)
        assert (row["review_state"], row["review_version"], row["disagreement"]) == (None, None, None)
    assert all(row["rater"] is None for row in after["corrections"])
    assert [row["kind"] for row in after["promotions"]] == ["promote", "promote", "promote", "rollback"]
    assert all(row["grace_until"] is None and row["host"] is None for row in after["jobs"])
    assert after["reviews"] == []


def test_the_migrated_database_works(release_copy, tmp_path):
    with AnnotationStore(release_copy) as store:
        assert store.current_model_id() == "b@2"  # the release rolled back from c@3
        assert store.rollback(by="alice").id == "base@1"  # and a rollback now walks further back
        history = store.case_history(1)
        assert [(row["version"], row["annotator"]) for row in history] == [(1, "bob"), (2, "carol")]
        for row in store.corrections(latest_only=False):
            mask = store.load_mask(row["mask_path"])
            assert mask.shape == (24, 32) and mask.any()
        assert store.draft(6, "dave").mask.shape == (24, 32)
        saved = store.save_correction(1, np.ones((24, 32), bool), annotator="erin", base_version=2)
        assert saved.version == 3 and saved.replaces_version == 2
        store.set_project_settings(review_required=True)
        store.submit_for_review(1, by="erin")
        store.decide_review(1, reviewer="rev", version=3, approve=True)
        from medclipseg.annotation.export import export_dataset

        result = export_dataset(store, tmp_path / "export", make_zip=False)
        assert sum(result.counts.values()) == 1
