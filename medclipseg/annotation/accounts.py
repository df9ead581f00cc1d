"""The team's logins kept in the annotation database (the ``users`` table, schema 10).

Rows hold a name, a role and a salted PBKDF2 hash of the password (medclipseg.team.access makes and
checks it); the password itself is never stored or shown. The app reads the table at every sign-in
and request (medclipseg.team.access.Team), so a change counts at once. Every function takes the
``sql.Database`` of an open write transaction, except the readers.
"""
from __future__ import annotations

from typing import Optional

from medclipseg.annotation.errors import StorageError


def add(db, *, name: str, password_hash: str, role: str, by: str, now: str, replace: bool = False) -> None:
    """Add a login; with ``replace`` an existing one gets the new password and role (else refused)."""
    exists = bool(db["users"].count_where("name = ?", [name]))
    if exists and not replace:
        raise StorageError(f"There is already a user {name!r}; use --replace to give them a new password or role.")
    db["users"].insert({"name": name, "password_hash": password_hash, "role": role, "created_at": now,
                        "created_by": by}, replace=True)


def remove(db, name: str) -> bool:
    """Remove a login; False when there was none (their saved work stays, under their name)."""
    return bool(db["users"].delete_where("name = ?", [name]))


def login(db, name: str) -> Optional[tuple]:
    """(password hash, role) of a user; None when there is none."""
    rows = db["users"].rows_where("name = ?", [name], select="password_hash, role", limit=1)
    return (rows[0]["password_hash"], rows[0]["role"]) if rows else None


def listing(db) -> list:
    """[{name, role, created_at, created_by}] by name; never the hashes."""
    return db["users"].rows_where(select="name, role, created_at, created_by", order_by="name")
