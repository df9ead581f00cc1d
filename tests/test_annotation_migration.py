"""Databases made by earlier releases (tests/data/release-schema6 and release-schema8, each written
by that release's own code: tests/data/make_release_database.py) open in this version: every row
is kept as it was, column by column, the new columns hold what the migrations say, and it works.
On PostgreSQL: today's release's SQLite database copied into a new PostgreSQL database by
``medclipseg copy-db`` holds every row, compared here with the file row by row, and works."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from medclipseg.annotation.schema import SCHEMA_VERSION
from medclipseg.annotation.store import AnnotationStore

RELEASES = {version: Path(__file__).parent / "data" / f"release-schema{version}" for version in (6, 8)}
NEW_COLUMNS = {  # schema version of the release -> table -> columns the migrations added
    6: {"promotions": {"kind"},  # 'rollback' for the release's rollbacks, checked below
        "jobs": {"grace_until", "host"},
        "corrections": {"rater"},
        "cases": {"rater_count", "review_state", "review_version", "disagreement", "consensus_path"},
        "model_versions": {"seq"}},
    8: {"model_versions": {"seq"}},
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


@pytest.fixture(params=sorted(RELEASES), ids=lambda version: f"schema{version}")
def release(request):
    return request.param


@pytest.fixture()
def release_copy(tmp_path, release):
    shutil.copytree(RELEASES[release], tmp_path / "db")
    return tmp_path / "db" / "annotations.db"


def test_every_row_of_the_release_database_survives_the_migration(release_copy, release):
    before = all_rows(release_copy)
    assert before["meta"] and {"key": "schema_version", "value": str(release)} in before["meta"]
    with AnnotationStore(release_copy) as store:
        assert store.schema_version == SCHEMA_VERSION == 10 and store.integrity_check() == "ok"
    after = all_rows(release_copy)
    old_meta, new_meta = ({row["key"]: row["value"] for row in rows[table]} for rows in (before, after)
                          for table in ["meta"])
    assert new_meta == {"review_required": "0", "raters_per_case": "1",
                        **old_meta, "schema_version": str(SCHEMA_VERSION)}
    assert after["alembic_version"] == [{"version_num": "team_users"}] and after["users"] == []
    for table, rows in before.items():
        if table == "meta":
            continue
        assert len(after[table]) == len(rows), table
        for old, new in zip(rows, after[table]):
            assert {column: new[column] for column in old} == old, (table, old)
            added = set(new) - set(old)
            assert added == NEW_COLUMNS[release].get(table, set()), table
    # Model versions keep the order they were added in (SQLite's rowid) as their sequence number.
    assert [row["seq"] for row in after["model_versions"]] == list(range(1, len(after["model_versions"]) + 1))
    assert [row["kind"] for row in after["promotions"]] == ["promote", "promote", "promote", "rollback"]
    if release == 6:
        corrected = {row["case_id"] for row in after["corrections"]}
        for row in after["cases"]:
            assert row["rater_count"] == (1 if row["id"] in corrected else 0)
            assert (row["review_state"], row["review_version"], row["disagreement"]) == (None, None, None)
        assert all(row["rater"] is None for row in after["corrections"])
        assert all(row["grace_until"] is None and row["host"] is None for row in after["jobs"])
        assert after["reviews"] == []
    else:
        assert len(after["reviews"]) == 5 and len(after["declines"]) == 1


def test_the_migrated_database_works(release_copy, release, tmp_path):
    with AnnotationStore(release_copy) as store:
        _works(store, tmp_path, approved_before=0 if release == 6 else 1)


def _works(store, tmp_path, *, approved_before: int):
    """The release's cases, versions, drafts, models and jobs are used as this release uses them."""
    store.set_project_settings(raters_per_case=1)
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
    assert sum(result.counts.values()) == 1 + approved_before


def _ordered_rows(rows: list, keys) -> list:
    return sorted(rows, key=lambda row: tuple(row[key] for key in keys))


def test_todays_release_database_moves_to_postgresql_row_by_row(tmp_path, postgres_database):
    """`medclipseg copy-db` moves the schema-8 release's SQLite database into PostgreSQL: every row of
    every table, read back from each engine with its own driver, is the same; the files come along;
    and the copy works as the file did."""
    import psycopg

    from medclipseg.cli import main

    shutil.copytree(RELEASES[8], tmp_path / "db")
    source = tmp_path / "db" / "annotations.db"
    assert main(["copy-db", "--db", str(source), "--to", postgres_database,
                 "--files-dir", str(tmp_path / "pg_files")]) == 0
    sqlite_rows = all_rows(source)  # migrated to this release's schema by the copy's opening it
    with psycopg.connect(postgres_database, row_factory=psycopg.rows.dict_row) as conn:
        for table, rows in sqlite_rows.items():
            if table == "alembic_version":
                continue
            keys = {"meta": ["key"], "volumes": ["case_id"], "declines": ["case_id", "annotator"]}.get(table, ["id"])
            copied = [dict(row) for row in conn.execute(f'SELECT * FROM "{table}"')]
            assert len(copied) == len(rows), table
            for old, new in zip(_ordered_rows(rows, keys), _ordered_rows(copied, keys)):
                assert set(new) == set(old), table
                for column, value in old.items():
                    if isinstance(value, float):
                        assert new[column] == pytest.approx(value, rel=1e-12), (table, column)
                    else:
                        assert new[column] == value, (table, column, old)
    source_files = sorted(p.relative_to(tmp_path / "db" / "annotations_files")
                          for p in (tmp_path / "db" / "annotations_files").rglob("*") if p.is_file())
    copied_files = sorted(p.relative_to(tmp_path / "pg_files") for p in (tmp_path / "pg_files").rglob("*")
                          if p.is_file())
    assert source_files == copied_files and len(source_files) > 10
    # A second copy into the same (now full) database is refused and changes nothing.
    assert main(["copy-db", "--db", str(source), "--to", postgres_database,
                 "--files-dir", str(tmp_path / "pg_files")]) == 2
    with AnnotationStore(postgres_database, files_dir=tmp_path / "pg_files") as store:
        assert store.dialect == "postgresql" and store.schema_version == SCHEMA_VERSION
        before = store.counts()
        case = store.add_case(np.full((8, 8, 3), 7, np.uint8), prompt="new after the copy", original_name="n.png")
        assert case.id == max(row["id"] for row in sqlite_rows["cases"]) + 1  # counters moved past the ids
        _works(store, tmp_path, approved_before=1)
        assert store.counts()["corrections"] == before["corrections"] + 1
