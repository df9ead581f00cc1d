"""Move an annotation database to another engine (an SQLite file to a team's PostgreSQL database).

``copy_database`` opens the source (which migrates it to this release's schema first, as any open
does), makes the target with the same Alembic revisions, copies every row of every table with its
ids (in the order the foreign keys need), moves the serial counters past the copied ids, copies the
files folder, and then compares the two databases row by row (``compare_databases``). The target
must be empty: a copy never merges into, or overwrites, a database that holds cases.

Scores written by releases that let a non-finite number through (``NaN`` in the JSON text) are
written as JSON ``null``: PostgreSQL's JSON refuses NaN, and the store reads both as "no score".
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass

from medclipseg.annotation.errors import StorageError

# Parents before children (foreign keys); the Alembic table last is never copied (each side has its own).
TABLES = ("meta", "model_versions", "cases", "predictions", "corrections", "drafts", "volumes", "promotions",
          "jobs", "reviews", "declines", "users")
JSON_SCORE_COLUMNS = {"predictions": ("scores",), "corrections": ("scores",)}
BATCH_ROWS = 500


@dataclass(frozen=True)
class CopyResult:
    rows: dict          # table -> rows copied
    files_copied: int
    seconds: float

    def summary(self) -> str:
        return (f"rows={sum(self.rows.values())} tables={len(self.rows)} files={self.files_copied} "
                f"seconds={self.seconds:.2f} checked=row-by-row")


def _finite_json(text):
    """JSON text with non-finite numbers as null (None stays None)."""
    if text is None:
        return None

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value

    return json.dumps(clean(json.loads(text)))


def _rows(store, table: str) -> list:
    db = store._connections.db()
    keys = ", ".join(f'"{column.name}"' for column in db[table].table.primary_key.columns)
    return db.query(f'SELECT * FROM "{table}" ORDER BY {keys}')


def copy_database(source, target, *, target_files_dir=None) -> CopyResult:
    """Copy the store `source` into the empty database at `target` (a URL or SQLite path; an
    AnnotationStore is used as it is) and check the copy row by row. Returns what was copied."""
    import sqlalchemy as sa

    from medclipseg.annotation.store import AnnotationStore

    started = time.perf_counter()
    opened = not isinstance(target, AnnotationStore)
    destination = AnnotationStore(target, files_dir=target_files_dir) if opened else target
    try:
        if destination.location.url == source.location.url:
            raise StorageError("The source and the target are the same database.")
        taken = destination._connections.db()["cases"].count_where()
        if taken:
            raise StorageError(f"The target database {destination.location.label} already holds {taken} cases; "
                               "copy into a new, empty database. Nothing was copied.")
        copied = {}
        with destination._connections.write() as db:
            for table in TABLES:
                target_columns = {column.name for column in db[table].columns}
                rows = _rows(source, table)
                if table == "meta":  # the target's own schema_version and settings are overwritten by the source's
                    db.execute("DELETE FROM meta")
                for column in JSON_SCORE_COLUMNS.get(table, ()):
                    for row in rows:
                        row[column] = _finite_json(row[column])
                for start in range(0, len(rows), BATCH_ROWS):
                    batch = [{key: value for key, value in row.items() if key in target_columns}
                             for row in rows[start:start + BATCH_ROWS]]
                    if batch:
                        db.run(sa.insert(db[table].table), batch)
                copied[table] = len(rows)
            if db.dialect == "postgresql":  # serial counters past the copied ids
                for table in TABLES:
                    if "id" in {column.name for column in db[table].columns} and table != "model_versions":
                        db.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                   f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)")
        files = 0
        for path in sorted(source.files_dir.rglob("*")):
            if path.is_file():
                to = destination.files_dir / path.relative_to(source.files_dir)
                to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, to)
                files += 1
        differences = compare_databases(source, destination)
        if differences:
            raise StorageError("The copy differs from the source: " + "; ".join(differences[:5]))
        return CopyResult(rows=copied, files_copied=files, seconds=time.perf_counter() - started)
    finally:
        if opened:
            destination.close()


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and (a == b or math.isclose(float(a), float(b), rel_tol=1e-12))
    return a == b


def compare_databases(first, second) -> list:
    """Every difference between the rows of two stores, table by table, as sentences (empty: equal).
    Scores JSON is compared as the store reads it (NaN and null both as no score)."""
    differences = []
    for table in TABLES:
        rows_a, rows_b = _rows(first, table), _rows(second, table)
        if table == "meta":
            rows_a = [row for row in rows_a if row["key"] != "schema_version"]
            rows_b = [row for row in rows_b if row["key"] != "schema_version"]
        if len(rows_a) != len(rows_b):
            differences.append(f"{table}: {len(rows_a)} rows against {len(rows_b)}")
            continue
        for row_a, row_b in zip(rows_a, rows_b):
            for column, value in row_a.items():
                other = row_b.get(column)
                if column in JSON_SCORE_COLUMNS.get(table, ()):
                    value, other = _finite_json(value), _finite_json(other)
                if not _same(value, other):
                    differences.append(f"{table} row {row_a.get('id', row_a.get('key', row_a.get('case_id')))}: "
                                       f"{column} is {value!r} against {other!r}")
    return differences
