"""`medclipseg.team.access`: roles, what each may do, and the logins of MEDCLIPSEG_AUTH."""
from __future__ import annotations

import re

import pytest

from app_support import ROOT
from medclipseg.team.access import ACTIONS, ROLES, AccessDenied, AuthSettingError, Team, allows, is_loopback, role_table

# Written from the words, not from ACTIONS: an annotator segments, takes cases, saves and
# skips their own; a reviewer also acts on other people's cases; only an admin exports, retrains,
# cancels jobs, promotes and rolls back (and adds cases in bulk).
EXPECTED = {
    "annotator": {"segment", "take_case", "save", "skip_own", "see_models"},
    "reviewer": {"segment", "take_case", "save", "skip_own", "see_models", "save_others", "skip_others", "review"},
    "admin": set(ACTIONS),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_each_cell_of_the_role_table(role, action):
    assert allows(role, action) == (action in EXPECTED[role])
    actor = Team.from_setting(f"someone:pw:{role}").actor("someone")
    if action in EXPECTED[role]:
        assert actor.require(action) is actor
    else:
        with pytest.raises(AccessDenied, match=r"^Only an? .* may do this .*signed in as someone, an? " + role):
            actor.require(action)


def test_the_readme_shows_the_role_table_as_the_code_has_it():
    readme = (ROOT / "README.md").read_text()
    assert role_table() in readme


def test_logins_roles_and_passwords():
    team = Team.from_setting(" ann:pw1 , rev:pw2:reviewer,boss:pw3:Admin ")
    assert team.logins_required and team.users == {"ann": "annotator", "rev": "reviewer", "boss": "admin"}
    assert team.authenticate("rev", "pw2") and not team.authenticate("rev", "pw1")
    assert not team.authenticate("nobody", "pw1") and not team.authenticate(None, None)
    assert not team.authenticate("ann", "pw1 ")  # passwords are taken as written
    assert "pw1" not in repr(team.__dict__)  # only salted hashes are kept
    assert team.actor("boss").role == "admin"
    with pytest.raises(AccessDenied, match="sign in"):
        team.actor(None, "ann")  # a typed name is no login
    with pytest.raises(AccessDenied, match="sign in"):
        team.actor("mallory")


def test_the_open_team_acts_as_admin_under_the_typed_name():
    for text in (None, "", "   "):
        team = Team.from_setting(text)
        assert not team.logins_required
        actor = team.actor(None, " carol ")
        assert (actor.name, actor.role, actor.signed_in) == ("carol", "admin", False)
        assert all(actor.may(action) for action in ACTIONS)


@pytest.mark.parametrize("text, message", [
    ("ann", r"entry 1 \(ann\) is not user:password"),
    ("ann:pw:admin:x", r"entry 1 \(ann:\*\*:admin:x\) is not user:password"),
    (":pw", "has no user name"),
    ("ann:", "user 'ann' has an empty password"),
    ("ann:pw:chief", "user 'ann' has the unknown role 'chief'; use one of annotator, reviewer, admin"),
    ("ann:pw,ann:pw2:admin", "user 'ann' is named twice"),
    ("ann:pw,,rev:pw", "entry 2 is empty"),
])
def test_a_malformed_setting_is_refused_in_words_without_the_password(text, message):
    with pytest.raises(AuthSettingError, match=message) as refused:
        Team.from_setting(text)
    assert str(refused.value).startswith("MEDCLIPSEG_AUTH: ")
    assert not re.search(r"\bpw2?\b", str(refused.value))


def test_loopback_addresses():
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "192.168.1.4", "example.org", "", None))
