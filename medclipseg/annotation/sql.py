"""The annotation database on SQLite (one file, the default) or PostgreSQL, through SQLAlchemy Core.

One connection per thread, in driver autocommit, so that a reader never holds a transaction open
(on SQLite an open read transaction stops WAL checkpoints; on PostgreSQL it holds back vacuum).
Writes open their transaction explicitly (:meth:`Connections.write`):

* **SQLite**: ``BEGIN IMMEDIATE`` takes the file's write lock up front (waiting up to the busy
  timeout), behind an in-process lock per file (SQLite's busy handler waits in sleeping steps of up
  to 100 ms; the lock hands the write over as soon as the last one commits). WAL lets readers go on.
* **PostgreSQL**: ``BEGIN`` and a transaction-level advisory lock, one per database, so read-then-
  write steps ("next version number", "is this case still leased to me") run one at a time on
  every server sharing the database, exactly as on SQLite. Readers never wait (MVCC).
* **Queue claims** (:meth:`Connections.claim`): on PostgreSQL they take no advisory lock; the
  candidate rows are locked with ``SELECT ... FOR UPDATE SKIP LOCKED``, so annotators asking at once
  are each given a different case without waiting for one another, and a row a writer is changing
  (writers lock the case rows they read, :meth:`Rows.get`) is skipped, not served. On SQLite a claim
  is an ordinary ``BEGIN IMMEDIATE`` write.

:class:`Database` is the small table API the store's modules use (``db["cases"].rows_where(...)``,
``insert``, ``update``, ``get``; ``db.query(sql, params)``); inserts and updates are SQLAlchemy Core
constructs on tables reflected from the database (its Alembic migrations are the one definition of
the schema), hand-written queries are ``text()`` with ``?`` or ``:name`` parameters. The few
differences between the two dialects are methods here (:meth:`Database.indexed_by`,
:meth:`Database.json_number`, :meth:`Database.skip_locked`).
"""
from __future__ import annotations

import contextlib
import decimal
import re
import threading
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlsplit

from medclipseg.annotation.errors import StorageError

BUSY_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


class RowNotFound(StorageError):
    """No row with that primary key."""


# ------------------------------------------------------------------------------------ locations


@dataclass(frozen=True)
class Location:
    """Where an annotation database lives: an SQLite file or a PostgreSQL database."""

    dialect: str                 # "sqlite" or "postgresql"
    url: str                     # the SQLAlchemy URL (psycopg driver for PostgreSQL)
    path: Optional[Path] = None  # the SQLite file
    label: str = ""              # for messages: the file, or the URL with its password masked

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def name(self) -> str:
        """A short name: the file's stem or the PostgreSQL database's name."""
        if self.path is not None:
            return self.path.stem
        return urlsplit(self.url).path.lstrip("/") or "postgres"


def is_url(value) -> bool:
    return isinstance(value, str) and "://" in value


def parse_location(value) -> Location:
    """An SQLite path (str or Path) or a ``postgresql://user:password@host:port/database`` URL;
    anything else is refused in words. A Location is returned as it is."""
    if isinstance(value, Location):
        return value
    if isinstance(value, Path) or not is_url(value):
        path = Path(str(value)).expanduser()
        return Location("sqlite", f"sqlite+pysqlite:///{path}", path=path, label=str(path))
    parts = urlsplit(value.strip())
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        path = Path(parts.path).expanduser()
        return Location("sqlite", f"sqlite+pysqlite:///{path}", path=path, label=str(path))
    if scheme not in POSTGRES_SCHEMES:
        raise StorageError(f"The database URL {mask_password(value)!r} is neither an SQLite file nor a "
                           "PostgreSQL URL; use a file path or postgresql://user:password@host:5432/database.")
    if not parts.hostname and "host=" not in (parts.query or ""):
        raise StorageError(f"The PostgreSQL URL {mask_password(value)!r} names no host; "
                           "use postgresql://user:password@host:5432/database.")
    if not parts.path.strip("/"):
        raise StorageError(f"The PostgreSQL URL {mask_password(value)!r} names no database; "
                           "add it after the host, as in postgresql://user:password@host:5432/database.")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise StorageError(f"The PostgreSQL URL {mask_password(value)!r} has a port that is not a number.") from None
    url = "postgresql+psycopg://" + value.strip().split("://", 1)[1]
    return Location("postgresql", url, label=mask_password(value))


def mask_password(url: str) -> str:
    """The URL with its password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


# ------------------------------------------------------------------------------------- engines


def _sqlite_engine(location: Location):
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    engine = sa.create_engine(location.url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                              connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _set_up(dbapi_connection, _record):  # pragma: no cover - exercised by every store
        dbapi_connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        mode = dbapi_connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"The annotation database {location.label} could not be switched to WAL mode "
                               f"(journal mode is {mode}); put it on a local disk.")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    return engine


def _postgres_engine(location: Location):
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    try:
        import psycopg  # noqa: F401
    except ImportError as exc:  # pragma: no cover - a dependency of medclipseg
        raise StorageError("A PostgreSQL database needs the 'psycopg' package (pip install 'psycopg[binary]').") from exc
    return sa.create_engine(location.url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                            connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "medclipseg"})


def create_engine(location: Location):
    return _sqlite_engine(location) if location.is_sqlite else _postgres_engine(location)


def connect(engine, location: Location):
    """A new connection, or a StorageError that says what is wrong in words."""
    import sqlalchemy as sa

    try:
        return engine.connect()
    except StorageError:
        raise
    except sa.exc.DBAPIError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(getattr(exc, "orig", exc)).strip() \
            else type(exc).__name__
        if location.is_sqlite:
            raise StorageError(f"Could not open the annotation database {location.label}: {reason}. "
                               "Check that it is an SQLite file and that the folder is writable.") from None
        raise StorageError(f"Could not connect to the PostgreSQL database {location.label}: {reason}. "
                           "Check the host, port, database name, user and password in MEDCLIPSEG_DB, "
                           "and that the server is running.") from None


# ----------------------------------------------------------------------------------- parameters

_QUESTION_MARK = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?")


def _named(sql: str, params) -> tuple:
    """(sql, dict): ``?`` placeholders become ``:p0``, ``:p1``, ... (not inside quoted text)."""
    if params is None:
        return sql, {}
    if isinstance(params, dict):
        return sql, dict(params)
    values = list(params)
    counter = iter(range(len(values)))

    def replace(match):
        if match.group(0) != "?":
            return match.group(0)
        return f":p{next(counter)}"

    return _QUESTION_MARK.sub(replace, sql), {f"p{i}": value for i, value in enumerate(values)}


def _text(sql: str, params) -> tuple:
    """A text() clause and its parameters; list or tuple values expand (``id IN :ids``)."""
    import sqlalchemy as sa

    sql, named = _named(sql, params)
    clause = sa.text(sql)
    expanding = [sa.bindparam(key, expanding=True) for key, value in named.items()
                 if isinstance(value, (list, tuple, set, frozenset)) and f":{key}" in sql]
    for bind in expanding:
        named[bind.key] = list(named[bind.key])
    if expanding:
        clause = clause.bindparams(*expanding)
    # Parameters the query does not name (an optional filter left out) would be refused by the driver.
    named = {key: value for key, value in named.items() if re.search(rf":{key}\b", sql)}
    return clause, named


def _plain(value):
    """Driver values as the store expects them: PostgreSQL's numeric (sum, avg) as int or float."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def _row(mapping) -> dict:
    return {key: _plain(value) for key, value in mapping.items()}


@contextlib.contextmanager
def unreachable_in_words():
    """A lost connection (server restarted, network gone) as a StorageError in words; the thread's
    connection is then invalidated, and the next call opens a new one."""
    import sqlalchemy as sa

    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        # SQLAlchemy marks an error its dialect recognises as a lost connection; others are raised as they are.
        if not getattr(exc, "connection_invalidated", False) and not isinstance(exc, sa.exc.InterfaceError):
            raise
        raise StorageError("The annotation database could not be reached (the connection was lost); "
                           "please try again in a moment.") from exc


# -------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    notnull: bool


@dataclass(frozen=True)
class Inserted:
    last_rowid: Optional[int]


class Rows:
    """One table of a :class:`Database` (the subset of sqlite-utils' Table the store uses)."""

    def __init__(self, db: "Database", name: str):
        self.db, self.name = db, name

    @property
    def table(self):
        return self.db._tables.table(self.db.conn, self.name)

    def exists(self) -> bool:
        import sqlalchemy as sa

        return sa.inspect(self.db.conn).has_table(self.name)

    @property
    def columns(self) -> list:
        import sqlalchemy as sa

        return [Column(c["name"], str(c["type"]), not c.get("nullable", True))
                for c in sa.inspect(self.db.conn).get_columns(self.name)]

    @property
    def count(self) -> int:
        return self.count_where()

    def _pk_clause(self, pk):
        table = self.table
        keys = list(table.primary_key.columns)
        values = list(pk) if isinstance(pk, (list, tuple)) else [pk]
        if len(values) != len(keys):
            raise StorageError(f"Table {self.name} has a primary key of {len(keys)} columns, not {len(values)}.")
        import sqlalchemy as sa

        return sa.and_(*[column == value for column, value in zip(keys, values)])

    def get(self, pk) -> dict:
        """The row with this primary key (RowNotFound when there is none). Inside a PostgreSQL write
        transaction a case row is locked as it is read, so a queue claim skips it until the write ends."""
        import sqlalchemy as sa

        statement = sa.select(self.table).where(self._pk_clause(pk))
        if self.db.lock_rows and self.name == "cases":
            statement = statement.with_for_update()
        row = self.db.run(statement).mappings().first()
        if row is None:
            raise RowNotFound(f"No row {pk!r} in {self.name}.")
        return _row(row)

    def rows_where(self, where: Optional[str] = None, where_args=None, *, select: str = "*",
                   order_by: Optional[str] = None, limit: Optional[int] = None, offset: Optional[int] = None):
        sql = f'SELECT {select} FROM "{self.name}"'
        if where:
            sql += f" WHERE {where}"
        if order_by:
            sql += f" ORDER BY {order_by}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        if offset is not None:
            sql += f" OFFSET {int(offset)}"
        return self.db.query(sql, where_args)

    def count_where(self, where: Optional[str] = None, where_args=None) -> int:
        sql = f'SELECT count(*) AS n FROM "{self.name}"' + (f" WHERE {where}" if where else "")
        return int(self.db.query(sql, where_args)[0]["n"])

    def insert(self, record: dict, *, replace: bool = False) -> Inserted:
        """Insert one row; ``replace``: the row with the same primary key is overwritten (an upsert)."""
        import sqlalchemy as sa

        table = self.table
        if replace:
            if self.db.dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            else:
                from sqlalchemy.dialects.sqlite import insert as dialect_insert
            keys = [column.name for column in table.primary_key.columns]
            statement = dialect_insert(table).values(**record)
            changes = {key: statement.excluded[key] for key in record if key not in keys}
            statement = (statement.on_conflict_do_update(index_elements=keys, set_=changes) if changes
                         else statement.on_conflict_do_nothing(index_elements=keys))
        else:
            statement = sa.insert(table).values(**record)
        result = self.db.run(statement)
        inserted = result.inserted_primary_key
        key = inserted[0] if inserted is not None and len(inserted) == 1 else None
        return Inserted(int(key) if isinstance(key, int) else None)

    def update(self, pk, changes: dict) -> None:
        import sqlalchemy as sa

        if not changes:
            return
        result = self.db.run(sa.update(self.table).where(self._pk_clause(pk)).values(**changes))
        if result.rowcount == 0:
            raise RowNotFound(f"No row {pk!r} in {self.name}.")

    def delete(self, pk) -> None:
        import sqlalchemy as sa

        self.db.run(sa.delete(self.table).where(self._pk_clause(pk)))

    def delete_where(self, where: str, where_args=None) -> int:
        return self.db.execute(f'DELETE FROM "{self.name}" WHERE {where}', where_args).rowcount

    def add_column(self, name: str, kind) -> None:
        """Add a nullable column (float, int, str or bytes)."""
        types = {float: "DOUBLE PRECISION" if self.db.dialect == "postgresql" else "FLOAT", int: "INTEGER",
                 str: "TEXT", bytes: "BYTEA" if self.db.dialect == "postgresql" else "BLOB"}
        self.db.execute(f'ALTER TABLE "{self.name}" ADD COLUMN "{name}" {types[kind]}')
        self.db._tables.forget(self.name)


class Tables:
    """Tables reflected from the database once per connection set (shared by its threads)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._tables: dict = {}

    def table(self, conn, name: str):
        table = self._tables.get(name)
        if table is not None:
            return table
        import sqlalchemy as sa

        with self._lock:
            if name not in self._tables:
                self._tables[name] = sa.Table(name, sa.MetaData(), autoload_with=conn)
            return self._tables[name]

    def forget(self, name: Optional[str] = None) -> None:
        with self._lock:
            if name is None:
                self._tables.clear()
            else:
                self._tables.pop(name, None)


class Database:
    """One connection's view of the annotation database (see the module docstring)."""

    def __init__(self, conn, dialect: str, tables: Tables, *, lock_rows: bool = False):
        self.conn, self.dialect, self._tables, self.lock_rows = conn, dialect, tables, lock_rows

    def __getitem__(self, name: str) -> Rows:
        return Rows(self, name)

    def run(self, statement, params=None):
        """Execute a SQLAlchemy Core statement."""
        with unreachable_in_words():
            return self.conn.execute(statement, params) if params is not None else self.conn.execute(statement)

    def query(self, sql: str, params=None) -> list:
        clause, named = _text(sql, params)
        with unreachable_in_words():
            return [_row(row) for row in self.conn.execute(clause, named).mappings()]

    def execute(self, sql: str, params=None):
        clause, named = _text(sql, params)
        with unreachable_in_words():
            return self.conn.execute(clause, named)

    def table_names(self) -> list:
        import sqlalchemy as sa

        return sa.inspect(self.conn).get_table_names()

    # -- where the dialects differ ------------------------------------------------------------
    def indexed_by(self, index: str) -> str:
        """SQLite's ``INDEXED BY`` hint (its planner otherwise sometimes scans the queue); PostgreSQL
        plans with its statistics and has no such clause."""
        return f'INDEXED BY "{index}"' if self.dialect == "sqlite" else ""

    def json_number(self, column: str, key: str) -> str:
        """An SQL expression: the number at ``key`` of the JSON object in ``column`` (NULL if absent)."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise StorageError(f"Not a score name: {key!r}.")
        if self.dialect == "sqlite":
            return f"json_extract({column}, '$.{key}')"
        return f"CAST(CAST({column} AS jsonb) ->> '{key}' AS double precision)"

    def desc_nulls_last(self, expression: str) -> str:
        """Descending with NULL last: SQLite's DESC already puts NULL last (and its indexes take no
        NULLS clause); PostgreSQL's puts NULL first unless told."""
        return f"{expression} DESC" if self.dialect == "sqlite" else f"{expression} DESC NULLS LAST"

    def skip_locked(self, alias: str) -> str:
        """``FOR UPDATE OF alias SKIP LOCKED`` on PostgreSQL (a claim passes over rows others hold);
        nothing on SQLite, where a claim holds the database's one write lock."""
        return f" FOR UPDATE OF {alias} SKIP LOCKED" if self.dialect == "postgresql" else ""


# ---------------------------------------------------------------------------------- connections

_WRITE_LOCKS: dict = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(key: str) -> "threading.RLock":
    """The in-process lock of one SQLite file (shared by every Connections on that file)."""
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(key, threading.RLock())


def advisory_key(name: str) -> int:
    """The PostgreSQL advisory lock key of the store's write lock (a stable 32-bit number)."""
    return zlib.crc32(f"medclipseg-annotation-store:{name}".encode())


class Connections:
    """The per-thread connections to one database; safe to share between threads."""

    def __init__(self, location):
        self.location = location if isinstance(location, Location) else parse_location(location)
        self.dialect = self.location.dialect
        self.engine = create_engine(self.location)
        self.tables = Tables()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list = []  # (weakref to thread, Connection), so close() can close them all
        self._closed = False
        key = str(self.location.path.resolve()) if self.location.is_sqlite else self.location.url
        self._file_lock = _write_lock(key) if self.location.is_sqlite else None

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed and not conn.invalidated:
            return conn
        if self._closed:
            raise StorageError("The annotation store has been closed; open it again.")
        conn = connect(self.engine, self.location)
        self._local.conn = conn
        with self._lock:
            # Close connections of threads that have ended, so long-lived apps do not pile them up.
            alive = []
            for thread_ref, other in self._open:
                thread = thread_ref()
                if thread is None or not thread.is_alive():
                    with contextlib.suppress(Exception):
                        other.close()
                else:
                    alive.append((thread_ref, other))
            alive.append((weakref.ref(threading.current_thread()), conn))
            self._open = alive
        return conn

    def db(self) -> Database:
        """This thread's connection, for reads (each statement on its own)."""
        return Database(self._connection(), self.dialect, self.tables)

    @contextlib.contextmanager
    def write(self) -> Iterator[Database]:
        """One write transaction, the database's writers one at a time (see the module docstring);
        ROLLBACK on any exception."""
        with self._transaction(claim=False) as db:
            yield db

    @contextlib.contextmanager
    def claim(self) -> Iterator[Database]:
        """A queue claim's transaction: on PostgreSQL without the writers' lock (rows are taken with
        ``FOR UPDATE SKIP LOCKED``); on SQLite the same as :meth:`write`."""
        with self._transaction(claim=True) as db:
            yield db

    @contextlib.contextmanager
    def _transaction(self, *, claim: bool) -> Iterator[Database]:
        import sqlalchemy as sa

        conn = self._connection()
        if self._file_lock is not None and not self._file_lock.acquire(timeout=BUSY_TIMEOUT_S):
            raise StorageError("The annotation database is busy (other writes of this server are queued); "
                               "please try again in a moment.")
        try:
            try:
                if self.location.is_sqlite:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                else:
                    conn.exec_driver_sql("BEGIN")
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(BUSY_TIMEOUT_S * 1000)}ms'")
                    if not claim:
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                                     {"key": advisory_key(self.location.name)})
            except sa.exc.DBAPIError as exc:
                with contextlib.suppress(Exception):
                    conn.exec_driver_sql("ROLLBACK")
                raise StorageError(f"The annotation database is busy or unreachable "
                                   f"({str(getattr(exc, 'orig', exc)).strip()}); please try again in a moment.") from exc
            try:
                yield Database(conn, self.dialect, self.tables, lock_rows=self.dialect == "postgresql")
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.exec_driver_sql("ROLLBACK")
                raise
            else:
                try:
                    conn.exec_driver_sql("COMMIT")
                except BaseException:
                    with contextlib.suppress(Exception):
                        conn.exec_driver_sql("ROLLBACK")
                    raise
        finally:
            if self._file_lock is not None:
                self._file_lock.release()

    def close(self) -> None:
        """Close every connection opened here (in any thread); later use raises StorageError."""
        with self._lock:
            self._closed = True
            for _, conn in self._open:
                with contextlib.suppress(Exception):
                    conn.close()
            self._open = []
        self._local = threading.local()
        with contextlib.suppress(Exception):
            self.engine.dispose()
