"""A real PostgreSQL server for the store's tests on both engines.

``MEDCLIPSEG_TEST_POSTGRES`` is a URL of a role that may create databases (``.ci/run`` starts
Debian's server and sets it). Each test gets a new database of its own, dropped afterwards. Without
the variable the PostgreSQL runs are skipped, unless ``MEDCLIPSEG_REQUIRE_POSTGRES=1`` (set by CI),
which turns a missing server into a failure.
"""
from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

URL_ENV = "MEDCLIPSEG_TEST_POSTGRES"
REQUIRE_ENV = "MEDCLIPSEG_REQUIRE_POSTGRES"
ENGINES = ("sqlite", "postgresql")


def server_url():
    """The admin URL of the test server, or None (after skipping or failing as the module says)."""
    url = os.environ.get(URL_ENV, "").strip()
    if url:
        return url
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {URL_ENV} names no PostgreSQL server.")
    pytest.skip(f"no PostgreSQL server for the tests ({URL_ENV} is not set)")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _admin(url: str):
    import psycopg

    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True, connect_timeout=10)


def create_database(url: str) -> str:
    """A new, empty database on the server of `url`; returns its URL."""
    name = f"medclipseg_test_{uuid.uuid4().hex[:12]}"
    with _admin(url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(url, name)


def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with _admin(with_database(url, "postgres")) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def postgres_database():
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    url = create_database(server_url())
    yield url
    drop_database(url)
