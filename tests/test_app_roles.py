"""Roles on a live `python app.py` (MEDCLIPSEG_AUTH with three roles): every API endpoint called
without a login and as each role, and every button of the page as each role (its server event).

A refused call says which role may do it and writes nothing: the database's rows and the files
beside it are compared before and after. An allowed call must get past the role check: it either
works or is refused for another reason in words (a retraining with 0 epochs, say), never for the role.
"""
from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest

from app_support import ROOT, app_server, demo_database, fill_queue
from medclipseg.annotation.store import AnnotationStore

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

EXAMPLE = ROOT / "assets" / "examples" / "brain_mri.png"
PROMPT = "Axial brain MRI showing one small lobulated meningioma on the left."
AUTH = "ann:pw-ann,rev:pw-rev:reviewer,boss:pw-boss:admin"
USERS = {"annotator": ("ann", "pw-ann"), "reviewer": ("rev", "pw-rev"), "admin": ("boss", "pw-boss")}
# From the words (not from the code's table): the least role each endpoint needs.
LEAST_ROLE = {"segment": "annotator", "next_case": "annotator", "save_correction": "annotator",
              "skip": "annotator", "unskip": "annotator", "job": "annotator", "models": "annotator",
              "ingest": "admin", "export": "admin", "retrain": "admin", "cancel_job": "admin",
              "promote": "admin", "rollback": "admin", "submit_review": "annotator", "review_queue": "reviewer",
              "next_review": "reviewer", "review": "reviewer", "agreement": "reviewer", "project": "admin"}
ORDER = ("annotator", "reviewer", "admin")
ROLE_REFUSAL = "may do this"


def database_state(db_path) -> dict:
    """Every row of every table, and the files beside the database (names and sizes)."""
    conn = sqlite3.connect(db_path)
    tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    rows = {table: conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid').fetchall() for table in tables}
    conn.close()
    files_dir = db_path.parent / f"{db_path.stem}_files"
    files = sorted((str(p.relative_to(files_dir)), p.stat().st_size) for p in files_dir.rglob("*") if p.is_file()) \
        if files_dir.exists() else []
    return {"rows": rows, "files": files}


def mask_png(folder, name="mask.png"):
    import cv2

    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 12:40] = 255
    path = folder / name
    cv2.imwrite(str(path), mask)
    return path


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("roles")
    db_path = folder / "db" / "annotations.db"
    store = demo_database(db_path)
    fill_queue(store, 12)
    store.close()
    with app_server(db_path, env={"MEDCLIPSEG_AUTH": AUTH}) as (url, _process):
        clients = {role: Client(url, verbose=False, auth=login) for role, login in USERS.items()}
        yield SimpleNamespace(url=url, db_path=db_path, clients=clients, folder=folder)


def calls(server, role) -> dict:
    """One valid call per endpoint, for `role`'s client (args, kwargs)."""
    store = AnnotationStore(server.db_path)
    try:
        base = store.current_model_id()
        cases = [row["id"] for row in store._db().query(
            "SELECT id FROM cases WHERE status = 'unreviewed' ORDER BY id")]
    finally:
        store.close()
    mask = mask_png(server.folder)
    return {
        "segment": (handle_file(str(EXAMPLE)), PROMPT, 4),
        "next_case": ("", ""),
        "save_correction": (cases[0], handle_file(str(mask)), "", "corrected"),
        "skip": (cases[1],),
        "unskip": (cases[1],),
        "job": (),
        "models": (),
        "ingest": ([handle_file(str(EXAMPLE))], PROMPT),
        "export": (),
        "retrain": (0, "no"),          # 0 epochs: refused for that reason once past the role check
        "cancel_job": (None,),
        "promote": (base,),
        "rollback": (),
        "submit_review": (cases[0],),   # each role submits the version it saved just before
        "review_queue": (),
        "next_review": (),
        "review": (cases[0], 1, "approve"),
        "agreement": (cases[0],),
        "project": (False, 1),          # a change: admins only
    }


def test_every_endpoint_without_a_login_is_refused_and_writes_nothing(team_server):
    from medclipseg.app.api import API_NAMES

    assert set(LEAST_ROLE) == set(API_NAMES)
    before = database_state(team_server.db_path)
    with pytest.raises(Exception):
        Client(team_server.url, verbose=False)  # not even the API's description without a login
    for name in API_NAMES:
        request = urllib.request.Request(f"{team_server.url}gradio_api/call/{name}", method="POST",
                                         data=json.dumps({"data": []}).encode(),
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code in (401, 403), name
    with pytest.raises(Exception):
        Client(team_server.url, verbose=False, auth=("ann", "wrong"))
    assert database_state(team_server.db_path) == before


@pytest.mark.parametrize("role", ORDER)
def test_every_endpoint_as_each_role(team_server, role):
    from medclipseg.app.api import API_NAMES

    client = team_server.clients[role]
    for name in API_NAMES:
        args = calls(team_server, role)[name]
        allowed = ORDER.index(role) >= ORDER.index(LEAST_ROLE[name])
        before = database_state(team_server.db_path)
        try:
            client.predict(*args, api_name=f"/{name}")
            message = None
        except Exception as exc:  # a refusal in words (gr.Error)
            message = str(exc)
        if allowed:
            assert message is None or ROLE_REFUSAL not in message, (role, name, message)
        else:
            least = "an admin" if LEAST_ROLE[name] == "admin" else "a reviewer or an admin"
            assert message is not None and f"Only {least} {ROLE_REFUSAL}" in message, (role, name, message)
            assert f"signed in as {USERS[role][0]}" in message
            assert database_state(team_server.db_path) == before, (role, name)


def test_an_annotator_skips_only_their_own_cases_and_a_reviewer_any(team_server):
    ann, rev = team_server.clients["annotator"], team_server.clients["reviewer"]
    mask = mask_png(team_server.folder, "own.png")
    case, _ = rev.predict("", "", api_name="/next_case")
    saved = rev.predict(case["case_id"], handle_file(str(mask)), "", "corrected", api_name="/save_correction")
    assert saved["annotator"] == "rev"
    before = database_state(team_server.db_path)
    with pytest.raises(Exception, match="only a reviewer or an admin may skip a case someone else saved"):
        ann.predict(case["case_id"], "", True, api_name="/skip")
    assert database_state(team_server.db_path) == before
    # The reviewer skips their own; the annotator may not undo the reviewer's skip; the reviewer may undo anyone's.
    rev.predict(case["case_id"], "", True, api_name="/skip")
    with pytest.raises(Exception, match="only a reviewer or an admin may undo someone else's skip"):
        ann.predict(case["case_id"], api_name="/unskip")
    assert rev.predict(case["case_id"], api_name="/unskip")["status"] == "corrected"
    own, _ = ann.predict("", "", api_name="/next_case")
    ann.predict(own["case_id"], handle_file(str(mask)), "", "corrected", api_name="/save_correction")
    assert ann.predict(own["case_id"], "", True, api_name="/skip")["status"] == "skipped"
    assert ann.predict(own["case_id"], api_name="/unskip")["status"] == "corrected"
    with pytest.raises(Exception, match="only a reviewer or an admin may skip"):
        ann.predict(case["case_id"], None, "", "skipped", api_name="/save_correction")  # a skip by save


def test_an_annotator_may_not_save_a_case_a_reviewer_holds_but_reads_the_project(team_server):
    ann, rev = team_server.clients["annotator"], team_server.clients["reviewer"]
    mask = mask_png(team_server.folder, "held.png")
    held, _ = rev.predict("", "", api_name="/next_case")  # the reviewer holds it now
    before = database_state(team_server.db_path)
    with pytest.raises(Exception, match=f"Case #{held['case_id']} is open by rev .*only they, a reviewer or an admin"):
        ann.predict(held["case_id"], handle_file(str(mask)), "", "corrected", api_name="/save_correction")
    assert database_state(team_server.db_path) == before
    # Reading the project's settings is everyone's; changing them is an admin's (test above).
    settings = ann.predict(None, None, api_name="/project")
    assert set(settings) >= {"review_required", "raters_per_case"}
    assert database_state(team_server.db_path) == before
    rev.predict(held["case_id"], "", False, api_name="/skip")  # gives it back


# -------------------------------------------------------------------------- the page's buttons

def page_events(demo) -> dict:
    """{event function name: function} of the built page (what its buttons call on the server)."""
    return {getattr(block_fn.fn, "__name__", ""): block_fn.fn for block_fn in demo.fns.values() if block_fn.fn}


# event -> (its action's least role, arguments before the request). Arguments are valid requests.
def button_calls(service, case_id, version_id):
    from medclipseg.app.handlers import open_case

    session = open_case(service, case_id, service.store.latest_prediction_id(case_id), "boss").session
    return {
        "on_segment": ("annotator", (True, str(EXAMPLE), PROMPT, False, 40, 400, 4, "", None, None)),
        "on_next": ("annotator", (True, "band_entropy", "", None, None)),
        "on_save": ("annotator", (session, None, "")),
        "on_accept": ("annotator", (session, None, "")),
        "on_skip": ("annotator", (True, session, "", None)),
        "on_skip_confirmed": ("annotator", (session, "", None)),
        "on_use_draft": ("annotator", (session, "")),
        "on_editor_change": ("annotator", (session, None, "")),
        "on_export": ("admin", (0.1, 0.2, 0, ["corrected", "accepted"], "authors", "staple")),
        "on_ingest": ("admin", ([str(EXAMPLE)], PROMPT, None, "", 4)),
        "on_start": ("admin", ("", 0, "no")),
        "on_cancel": ("admin", ("", 1)),
        "on_promote": ("admin", ("", version_id, 1)),
        "on_rollback": ("admin", ("", 1)),
        "on_submit": ("annotator", (session, "")),
        "on_review_next": ("reviewer", ("uncertainty", "", None, None)),
        "on_approve": ("reviewer", (session, None, "", "")),
        "on_reject": ("reviewer", (session, None, "needs work", "")),
        "on_review_queue": ("reviewer", ("uncertainty",)),
        "on_upload": ("annotator", (str(EXAMPLE),)),
        "on_window": ("annotator", (str(EXAMPLE), True, 40, 400)),
    }


# Events with no status line to answer in: refused, they change nothing on the page (an empty
# update or skips) and read nothing; allowed, they answer. event -> (least role, arguments).
def quiet_calls():
    return {
        "on_example": ("annotator", (SimpleNamespace(index=0),)),
        "on_preset": ("annotator", ("Soft tissue",)),
        "on_queue_tick": ("annotator", (None,)),
        "on_tick": ("annotator", (None, 1)),
        "on_epochs": ("admin", (1,)),
    }


# Events every visitor's page runs: they show a signed-in person their role's page (tested below)
# and nothing to anyone else.
OPEN_EVENTS = {"on_load", "on_role"}


def says_nothing(answer) -> bool:
    """An empty update, a skip, or a sequence of them: the page keeps what it shows."""
    if isinstance(answer, (list, tuple)):
        return all(says_nothing(item) for item in answer)
    return answer == {} or answer == {"__type__": "update"}


def as_text(answer) -> str:
    """Everything an event answered, as text (a generator's updates included)."""
    import inspect

    if inspect.isgenerator(answer):
        answer = list(answer)
    return repr(answer)


def test_every_button_checks_the_role_on_the_server(tmp_path):
    """The page's events called as Gradio calls them, with a request signed in as each role (and
    none): a role that may not act gets the refusal in words and the database does not change."""
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.app.layout import build_app
    from medclipseg.team.access import Team

    db_path = tmp_path / "db" / "annotations.db"
    store = demo_database(db_path)
    case_ids = fill_queue(store, 4)
    service = AnnotationService(store, weights="demo", device="cpu", num_samples=4)
    try:
        demo = build_app(service, team=Team.from_setting(AUTH))
        events = page_events(demo)
        for role in (None, *ORDER):
            request = SimpleNamespace(username=USERS[role][0] if role else None, cookies={}, app=None)
            for name, (least, args) in button_calls(service, case_ids[0], store.current_model_id()).items():
                allowed = role is not None and ORDER.index(role) >= ORDER.index(least)
                before = database_state(db_path)
                text = as_text(events[name](*args, request=request))
                if allowed:
                    assert ROLE_REFUSAL not in text and "sign in" not in text, (role, name, text[:300])
                else:
                    who = "an admin" if least == "admin" else "a reviewer or an admin"
                    expected = "Please sign in" if role is None else f"Only {who} {ROLE_REFUSAL}"
                    assert expected in text, (role, name, text[:300])
                    assert database_state(db_path) == before, (role, name)
        # Every event of the page is one of those checked here (an API endpoint has its own tests).
        page_only = {name for name in events if name.startswith("on_")}
        checked = set(button_calls(service, case_ids[0], store.current_model_id())) | set(quiet_calls())
        assert page_only == checked | OPEN_EVENTS, page_only ^ (checked | OPEN_EVENTS)
        for role in (None, *ORDER):
            request = SimpleNamespace(username=USERS[role][0] if role else None, cookies={}, app=None)
            for name, (least, args) in quiet_calls().items():
                allowed = role is not None and ORDER.index(role) >= ORDER.index(least)
                answer = events[name](*args, request=request)
                assert says_nothing(answer) is not allowed, (role, name, repr(answer)[:300])
        # The editor's server functions (volume slices, planes, tools) run outside the queue: same checks.
        (editor,) = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "editor"]
        assert sorted(fn.__name__ for fn in editor.server_fns) == ["volume_plane", "volume_slices", "volume_tool"]
        for role in (None, *ORDER):
            request = SimpleNamespace(username=USERS[role][0] if role else None, cookies={}, app=None)
            for fn in editor.server_fns:
                answer = fn({"case_id": case_ids[0], "annotator": ""}, request=request)
                assert answer["kind"] == "error", (role, fn.__name__, answer)
                if role is None:
                    assert "Please sign in" in answer["message"], (fn.__name__, answer)
                else:  # refused for what the request is (an image case), not for who sends it
                    assert "is an image, not a volume" in answer["message"], (role, fn.__name__, answer)
        for name in OPEN_EVENTS:  # nobody signed in: nothing of the project
            request = SimpleNamespace(username=None, cookies={}, app=None)
            answer = events[name](*(({}, "") if name == "on_load" else ()), request=request)
            assert "Signed in as" not in repr(answer) and "case" not in repr(answer).lower(), (name, repr(answer)[:300])
        # The page shows each role only what it may use.
        loaded = events["on_load"]
        for role, admin in (("annotator", False), ("reviewer", False), ("admin", True)):
            update = loaded({}, "", request=SimpleNamespace(username=USERS[role][0], cookies={}, app=None))
            tabs = {getattr(block, "elem_id", None): value for block, value in update.items()}
            assert tabs["ingest-tab"]["visible"] is admin and tabs["export-tab"]["visible"] is admin
            assert f"Signed in as **{USERS[role][0]}** ({role})" in tabs["signed-in"]
            controls = events["on_role"](request=SimpleNamespace(username=USERS[role][0], cookies={}, app=None))
            assert [c["visible"] for c in controls] == [admin, admin]
    finally:
        service.close()
        store.close()


def test_two_raters_and_a_reviewer_through_the_api(team_server):
    """An admin asks for two raters per case with review; two people label one case, it is submitted
    by itself, the reviewer sees the disagreement but, having rated it, leaves the decision to the admin,
    who must say why to reject, approves, and exports both raters' masks and their consensus."""
    import zipfile

    import cv2

    ann, rev, boss = (team_server.clients[role] for role in ORDER)
    assert boss.predict(True, 2, api_name="/project") == {"review_required": True, "raters_per_case": 2}
    try:
        first = np.zeros((48, 64), np.uint8)
        first[10:30, 10:40] = 255
        second = np.zeros((48, 64), np.uint8)
        second[12:32, 14:44] = 255
        cv2.imwrite(str(team_server.folder / "first.png"), first)
        cv2.imwrite(str(team_server.folder / "second.png"), second)
        case, _ = ann.predict("", "", api_name="/next_case")
        ann.predict(case["case_id"], handle_file(str(team_server.folder / "first.png")), "", "corrected",
                    api_name="/save_correction")
        again, _ = rev.predict("", "", api_name="/next_case")
        assert again["case_id"] == case["case_id"]  # the second rater gets the same case
        saved = rev.predict(case["case_id"], handle_file(str(team_server.folder / "second.png")), "", "corrected",
                            api_name="/save_correction")
        a, b = first > 0, second > 0
        expected = 1 - 2 * (a & b).sum() / (a.sum() + b.sum())
        queued = rev.predict("disagreement", api_name="/review_queue")
        (row,) = [row for row in queued if row["case_id"] == case["case_id"]]
        assert row["raters"] == 2 and row["disagreement"] == pytest.approx(expected)
        summary, _image = rev.predict("disagreement", api_name="/next_review")
        assert summary["case_id"] == case["case_id"] and summary["version"] == saved["version"]
        assert set(summary["agreement"]["raters"]) == {"ann", "rev"}
        # rev rated the case: another reviewer or an admin decides on it.
        before = database_state(team_server.db_path)
        with pytest.raises(Exception, match=f"v{saved['version']} was saved by you, rev"):
            rev.predict(case["case_id"], saved["version"], "approve", "", api_name="/review")
        assert database_state(team_server.db_path) == before
        with pytest.raises(Exception, match="Say why in a comment"):
            boss.predict(case["case_id"], saved["version"], "reject", "", api_name="/review")
        decided = boss.predict(case["case_id"], saved["version"], "approve", "both fine", api_name="/review")
        assert decided["decision"] == "approved"
        archive, _counts = boss.predict(api_name="/export")
        with zipfile.ZipFile(archive) as exported:
            manifest = json.loads(next(exported.read(n) for n in exported.namelist() if n.endswith("manifest.json")))
            (entry,) = [e for e in manifest["cases"] if e["case_id"] == case["case_id"]]
            assert set(entry["raters"]) == {"ann", "rev"} and entry["label_kind"] == "consensus (STAPLE)"
            assert len(manifest["cases"]) == 1  # review on: only the approved case
    finally:
        boss.predict(False, 1, api_name="/project")
