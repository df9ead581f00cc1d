"""Who may do what: three roles, the actions each may take, and the logins of ``MEDCLIPSEG_AUTH``.

Roles are ordered: an annotator segments, takes cases, saves, submits and skips their own (a case
they hold or saved, never over someone else's version or a label under review); a reviewer also
reviews (approves, rejects, edits) others' labels and may act on cases other people hold, saved or
skipped; only an admin decides on a label they saved themselves, adds cases in bulk, exports,
retrains, cancels jobs, promotes, rolls back and changes the project's settings. ``ACTIONS`` is the
one table of what each role may do: the app checks it at every endpoint and UI action, and the
README's role table is written from it (a test compares the two).

Logins: ``MEDCLIPSEG_AUTH="user:password[:role],..."`` (role ``annotator`` when left out), and the
``users`` table of the annotation database (``medclipseg users add``; medclipseg.annotation.accounts),
looked up at every sign-in and request, so a user added, changed or removed there counts at once
(only the first user of an open server needs a restart, which turns logins on). A name in both
places is the setting's. Passwords are kept only as salted PBKDF2-SHA256 hashes (in memory for the
setting, as ``pbkdf2_sha256$rounds$salt$hash`` text in the table) and compared in constant time.
A malformed setting (an unknown role, an empty user or password, a user named twice) raises
:class:`AuthSettingError` with the entry in words (password masked), so the server does not start.

Without logins the app is one person's tool on their own machine: everyone acts as an admin
under the name they type (:meth:`Team.open`). The app refuses to listen beyond the loopback
address that way unless told to (medclipseg.settings.allow_no_login), and says loudly that it is open.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from dataclasses import dataclass
from typing import Optional

ROLES = ("annotator", "reviewer", "admin")  # each may do everything the ones before it may
DEFAULT_ROLE = "annotator"
PBKDF2_ROUNDS = 120_000


@dataclass(frozen=True)
class Action:
    name: str
    role: str          # the least role that may take it
    what: str          # what it is, as the README's role table says it


ACTIONS = {action.name: action for action in (
    Action("segment", "annotator", "Segment an image or a scan (and add it to the queue)"),
    Action("take_case", "annotator", "Take the next case from the queue, open a case"),
    Action("save", "annotator", "Edit, keep drafts, save or accept a correction of a case they hold or saved"),
    Action("skip_own", "annotator", "Skip or unskip a case they hold or saved, that nobody else saved or skipped"),
    Action("see_models", "annotator", "See the model versions and the retraining job"),
    Action("save_others", "reviewer", "Open a case another person holds; save over someone else's version, "
                                      "or over a label submitted for review or approved"),
    Action("skip_others", "reviewer", "Skip a case someone else saved, unskip someone else's skip"),
    Action("review", "reviewer", "Review submitted cases: approve, reject with a comment, edit; see raters' agreement"),
    Action("review_own", "admin", "Approve or reject a version they saved themselves (a reviewer's own label "
                                  "is decided by another reviewer or an admin)"),
    Action("ingest", "admin", "Add images or scans in bulk (ingest)"),
    Action("export", "admin", "Export the labels"),
    Action("retrain", "admin", "Start a retraining round"),
    Action("cancel_job", "admin", "Cancel a retraining round"),
    Action("promote", "admin", "Promote a model version"),
    Action("rollback", "admin", "Roll back to the version before"),
    Action("project_settings", "admin", "Turn the review step on or off, set the raters per case"),
)}


class AuthSettingError(ValueError):
    """MEDCLIPSEG_AUTH cannot be read; the message says which entry and why."""


class AccessDenied(Exception):
    """A signed-in person asked for an action their role does not allow; nothing was done."""


def role_rank(role: str) -> int:
    return ROLES.index(role)


def allows(role: str, action: str) -> bool:
    """True when `role` may take `action` (an unknown action is a programming error)."""
    if action not in ACTIONS:
        raise KeyError(f"unknown action {action!r}")
    return role in ROLES and role_rank(role) >= role_rank(ACTIONS[action].role)


def _article(role: str) -> str:
    return f"an {role}" if role[0] in "aeiou" else f"a {role}"


@dataclass(frozen=True)
class Actor:
    """Who is asking: a name and a role. ``signed_in`` is False in the open (no-login) mode."""

    name: Optional[str]
    role: str
    signed_in: bool = True

    def may(self, action: str) -> bool:
        return allows(self.role, action)

    def require(self, action: str) -> "Actor":
        """This actor, when the role allows `action`; AccessDenied in words otherwise."""
        if not self.may(action):
            least = ACTIONS[action].role
            who = f"{self.name}, {_article(self.role)}" if self.name else _article(self.role)
            allowed = "an admin" if least == "admin" else f"{_article(least)} or an admin"
            raise AccessDenied(f"Only {allowed} may do this ({ACTIONS[action].what.lower()}); you are signed in "
                               f"as {who}. Nothing was changed.")
        return self


@dataclass(frozen=True)
class _Login:
    name: str
    role: str
    salt: bytes
    digest: bytes


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, PBKDF2_ROUNDS)


HASH_SCHEME = "pbkdf2_sha256"
MIN_PASSWORD_CHARS = 8  # for passwords kept in the database (the setting's are the deployer's own)


def encode_password(password: str) -> str:
    """``pbkdf2_sha256$rounds$salt$hash`` (hex) of a password, for the users table."""
    salt = os.urandom(16)
    return f"{HASH_SCHEME}${PBKDF2_ROUNDS}${salt.hex()}${_hash(password, salt).hex()}"


def password_matches(password, encoded) -> bool:
    """True when `password` is the one `encoded` was made from (constant-time; False for anything malformed)."""
    try:
        scheme, rounds, salt, digest = str(encoded).split("$")
        if scheme != HASH_SCHEME or not isinstance(password, str):
            raise ValueError(scheme)
        made = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), bytes.fromhex(salt), int(rounds))
        return hmac.compare_digest(made, bytes.fromhex(digest))
    except (ValueError, TypeError):
        _hash("timing", b"\0" * 16)
        return False


def check_new_login(name, password, role) -> tuple:
    """(name, role) of a login to keep in the database; AuthSettingError in words when it cannot be."""
    name = name.strip() if isinstance(name, str) else ""
    if not name or any(character in name for character in ":,") or len(name) > 200:
        raise AuthSettingError("A user name must be 1 to 200 characters without ':' or ','.")
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise AuthSettingError(f"A password must have at least {MIN_PASSWORD_CHARS} characters.")
    role = (role or DEFAULT_ROLE).strip().lower()
    if role not in ROLES:
        raise AuthSettingError(f"Unknown role {role!r}; use one of {', '.join(ROLES)}.")
    return name, role


def _masked(entry: str) -> str:
    """'bob:secret:boss' -> 'bob:******:boss' (a start-up error must not print a password)."""
    parts = entry.split(":")
    if len(parts) >= 2:
        parts[1] = "*" * max(1, len(parts[1]))
    return ":".join(parts)


class Team:
    """The logins of a project and their roles; ``Team.open()`` when there are none.

    ``directory``: where more logins are kept (the annotation store: ``login(name)`` gives
    ``(encoded password, role)`` or None, ``has_logins()``), looked up live."""

    def __init__(self, logins: tuple = (), directory=None):
        self._logins = {login.name: login for login in logins}
        self._directory = directory
        # Whether the server asks for a login is decided once, at start: Gradio's login page is
        # switched on or off when the app launches.
        self._required = bool(self._logins) or bool(directory is not None and directory.has_logins())

    def with_directory(self, directory) -> "Team":
        """This team, with the users of `directory` (the annotation store) behind the setting's."""
        return Team(tuple(self._logins.values()), directory=directory)

    @classmethod
    def open(cls) -> "Team":
        return cls(())

    @classmethod
    def from_setting(cls, text: Optional[str], *, setting: str = "MEDCLIPSEG_AUTH") -> "Team":
        """Parse ``user:password[:role],...``; an empty or unset value is the open team."""
        if text is None or not text.strip():
            return cls.open()
        logins, seen = [], set()
        for number, raw in enumerate(text.split(","), start=1):
            entry = raw.strip()
            if not entry:
                raise AuthSettingError(f"{setting}: entry {number} is empty; write user:password[:role] entries "
                                       "separated by single commas.")
            parts = entry.split(":")
            if len(parts) not in (2, 3):
                raise AuthSettingError(f"{setting}: entry {number} ({_masked(entry)}) is not user:password or "
                                       "user:password:role (a password may not contain ':' or ',').")
            name, password = parts[0].strip(), parts[1]
            role = parts[2].strip().lower() if len(parts) == 3 else DEFAULT_ROLE
            if not name:
                raise AuthSettingError(f"{setting}: entry {number} ({_masked(entry)}) has no user name.")
            if not password:
                raise AuthSettingError(f"{setting}: user {name!r} has an empty password.")
            if role not in ROLES:
                raise AuthSettingError(f"{setting}: user {name!r} has the unknown role {parts[2].strip()!r}; "
                                       f"use one of {', '.join(ROLES)} (or leave it out for {DEFAULT_ROLE}).")
            if name in seen:
                raise AuthSettingError(f"{setting}: user {name!r} is named twice; give each user one entry.")
            seen.add(name)
            salt = os.urandom(16)
            logins.append(_Login(name, role, salt, _hash(password, salt)))
        return cls(tuple(logins))

    @property
    def logins_required(self) -> bool:
        return self._required

    @property
    def users(self) -> dict:
        """{user name: role}: the database's users, then the setting's (which win on a clash)."""
        kept = dict(self._directory.users()) if self._directory is not None else {}
        return {**kept, **{name: login.role for name, login in self._logins.items()}}

    def _kept_login(self, name):
        """(encoded password, role) of a user of the directory; None when there is none."""
        if self._directory is None or not isinstance(name, str) or name in self._logins:
            return None
        return self._directory.login(name)

    def authenticate(self, name, password) -> bool:
        """True for a known user with this password (Gradio's ``auth`` callable)."""
        login = self._logins.get(str(name)) if isinstance(name, str) else None
        if login is None:
            kept = self._kept_login(name)
            if kept is not None:
                return password_matches(password, kept[0])
        if login is None or not isinstance(password, str):
            _hash("timing", b"\0" * 16)  # about as long as a real check, known user or not
            return False
        return hmac.compare_digest(login.digest, _hash(password, login.salt))

    def actor(self, login_name: Optional[str], typed_name: Optional[str] = None) -> Actor:
        """Who is asking: the signed-in user with their role, or, in the open mode, the typed name as
        an admin. A request without a known login when logins are required gets no role at all."""
        if not self.logins_required:
            name = typed_name.strip() if isinstance(typed_name, str) and typed_name.strip() else None
            return Actor(name=name, role="admin", signed_in=False)
        login = self._logins.get(login_name) if isinstance(login_name, str) else None
        if login is not None:
            return Actor(name=login.name, role=login.role)
        kept = self._kept_login(login_name)  # read at every request: a removed user is refused at once
        if kept is None:
            raise AccessDenied("Please sign in: this server requires a login.")
        return Actor(name=login_name, role=kept[1])


def is_loopback(host: Optional[str]) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host is None:
        return False
    host = str(host).strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def role_table() -> str:
    """The README's table of what each role may do, as Markdown."""
    lines = ["| action | " + " | ".join(ROLES) + " |", "|---|" + "---|" * len(ROLES)]
    for action in ACTIONS.values():
        lines.append(f"| {action.what} | " + " | ".join("yes" if allows(role, action.name) else "no"
                                                       for role in ROLES) + " |")
    return "\n".join(lines)
