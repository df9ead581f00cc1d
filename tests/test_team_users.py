"""Logins kept in the annotation database (`medclipseg users`, the users table): hashed, checked,
looked up live by the app's Team, on both engines; and a live app whose only logins are there."""
from __future__ import annotations

import io

import pytest

from annotation_support import sql_connection
from medclipseg.annotation.store import AnnotationStore, StorageError
from medclipseg.team.access import AccessDenied, Team, encode_password, password_matches


def test_a_password_is_kept_as_a_salted_pbkdf2_hash():
    import hashlib

    encoded = encode_password("correct horse")
    scheme, rounds, salt, digest = encoded.split("$")
    # The hash, recomputed here from the standard library's PBKDF2 with the stored salt and rounds.
    assert scheme == "pbkdf2_sha256" and int(rounds) >= 100_000 and len(bytes.fromhex(salt)) == 16
    assert hashlib.pbkdf2_hmac("sha256", b"correct horse", bytes.fromhex(salt), int(rounds)).hex() == digest
    assert encode_password("correct horse") != encoded  # a new salt each time
    assert password_matches("correct horse", encoded)
    for wrong in ("correct horsE", "", None, 12345678):
        assert not password_matches(wrong, encoded)
    for malformed in ("", "md5$1$00$00", "pbkdf2_sha256$x$zz$yy", None):
        assert not password_matches("correct horse", malformed)


def test_users_in_the_database_sign_in_and_their_changes_count_at_once(store):
    store.add_user("rita", "rita-passphrase", role="reviewer", by="boss")
    stored = sql_connection(store).execute("SELECT name, password_hash, role, created_by FROM users").fetchall()
    assert [(n, r, b) for n, _h, r, b in stored] == [("rita", "reviewer", "boss")]
    assert "rita-passphrase" not in stored[0][1] and stored[0][1].startswith("pbkdf2_sha256$")

    team = Team.from_setting("ann:pw-ann").with_directory(store)
    assert team.logins_required and team.users == {"rita": "reviewer", "ann": "annotator"}
    assert team.authenticate("rita", "rita-passphrase") and not team.authenticate("rita", "wrong-passphrase")
    assert team.authenticate("ann", "pw-ann") and not team.authenticate("nobody", "x" * 10)
    assert team.actor("rita").role == "reviewer" and team.actor("rita").may("review")

    store.add_user("rita", "another-passphrase", role="admin", replace=True)  # a running app sees it at once
    assert team.actor("rita").role == "admin" and team.authenticate("rita", "another-passphrase")
    assert not team.authenticate("rita", "rita-passphrase")
    assert store.remove_user("rita") and not store.remove_user("rita")
    with pytest.raises(AccessDenied, match="sign in"):
        team.actor("rita")
    assert not team.authenticate("rita", "another-passphrase")

    store.add_user("ann", "database-passphrase", role="admin")  # the setting's entry wins on a clash
    assert team.actor("ann").role == "annotator" and not team.authenticate("ann", "database-passphrase")
    assert Team.open().with_directory(store).logins_required  # users in the database: logins on


@pytest.mark.parametrize("name, password, role, words", [
    ("", "long-enough", "annotator", "user name"),
    ("a:b", "long-enough", "annotator", "without ':'"),
    ("bob", "short", "annotator", "at least 8 characters"),
    ("bob", None, "annotator", "at least 8 characters"),
    ("bob", "long-enough", "boss", "Unknown role 'boss'"),
], ids=["empty_name", "colon", "short_password", "no_password", "unknown_role"])
def test_a_login_that_cannot_be_kept_is_refused_in_words_and_nothing_is_written(store, name, password, role, words):
    with pytest.raises(StorageError, match=words):
        store.add_user(name, password, role=role)
    assert store.user_list() == []


def test_adding_a_user_twice_needs_replace(store):
    store.add_user("bob", "first-passphrase")
    with pytest.raises(StorageError, match="already a user 'bob'"):
        store.add_user("bob", "second-passphrase")
    assert password_matches("first-passphrase", store.login("bob")[0])


def test_the_users_command(tmp_path, monkeypatch, capsys):
    from medclipseg.cli import main

    db = str(tmp_path / "annotations.db")
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-passphrase\n"))
    assert main(["users", "add", "rita", "--role", "reviewer", "--password-stdin", "--db", db, "--by", "boss"]) == 0
    assert capsys.readouterr().out.strip() == "user=rita role=reviewer"
    assert main(["users", "list", "--db", db]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("rita\treviewer\tadded ") and "by boss" in listed and "pbkdf2" not in listed
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["users", "add", "sam", "--password-stdin", "--db", db]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    assert main(["users", "remove", "--db", db]) == 2 and "Name the user" in capsys.readouterr().err
    assert main(["users", "remove", "rita", "--db", db]) == 0 and "removed=rita" in capsys.readouterr().out
    assert main(["users", "remove", "rita", "--db", db]) == 2 and "no user 'rita'" in capsys.readouterr().err
    with AnnotationStore(db) as store:
        assert store.user_list() == []


def test_a_live_app_whose_logins_are_only_in_the_database(tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    from app_support import app_server, demo_database

    db = tmp_path / "annotations.db"
    store = demo_database(db)
    store.add_user("rita", "rita-passphrase", role="reviewer")
    store.add_user("ann", "ann-passphrase")
    store.close()
    with app_server(db, env={"MEDCLIPSEG_AUTH": ""}) as (url, _process):
        with pytest.raises(Exception):
            gradio_client.Client(url, verbose=False)  # a login is required: the users table has users
        with pytest.raises(Exception):
            gradio_client.Client(url, verbose=False, auth=("rita", "wrong-passphrase"))
        reviewer = gradio_client.Client(url, verbose=False, auth=("rita", "rita-passphrase"))
        assert reviewer.predict("uncertainty", api_name="/review_queue") is not None
        annotator = gradio_client.Client(url, verbose=False, auth=("ann", "ann-passphrase"))
        with pytest.raises(Exception, match="may do this"):
            annotator.predict("uncertainty", api_name="/review_queue")
