"""The app's named endpoints through gradio_client against a live `python app.py` on 127.0.0.1.

Covers the load test (8 annotators x 25 saves, no case served twice), a server killed in the
middle of saving, the segment, skip, ingest and export endpoints, bad requests answered in words,
login, a DICOM carrying patient identifiers that must never reach the database, the files beside
it or an export, that no file the app wrote outlives the servers in the temp directory, and the
model endpoints: retrain (a real worker process), job, models, promote, rollback, cancel_job.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import tempfile
import threading
import time
import zipfile
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from app_support import (
    PATIENT_ID,
    PATIENT_NAME,
    ROOT,
    app_server,
    demo_database,
    fill_queue,
    write_dicom,
)
from medclipseg.annotation.store import AnnotationStore

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

EXAMPLE = ROOT / "assets" / "examples" / "brain_mri.png"
PROMPT = "Axial brain MRI showing one small lobulated meningioma on the left."
APP_PREFIXES = ("medclipseg-",)  # every folder the app (or an older version of it) made in the temp dir


def app_temp_entries() -> set:
    return {entry for entry in os.listdir(tempfile.gettempdir()) if entry.startswith(APP_PREFIXES)}


@pytest.fixture(scope="module", autouse=True)
def temp_dir_left_clean():
    """After every server of this module has stopped, the temp dir holds no new folder of the app."""
    before = app_temp_entries()
    yield
    left = app_temp_entries() - before
    assert not left, f"left in {tempfile.gettempdir()}: {sorted(left)}"


def client_for(url, auth=None):
    return Client(url, verbose=False, auth=auth)


def mask_file(folder: Path, height=48, width=64, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    mask[top:top + height // 3, left:left + width // 3] = 255
    path = folder / f"mask{seed}.png"
    cv2.imwrite(str(path), mask)
    return path


def test_eight_annotators_save_concurrently(tmp_path):
    db_path = tmp_path / "db" / "annotations.db"
    annotators, saves_each = 8, 25
    queued_db(tmp_path, annotators * saves_each + 16)
    masks = [mask_file(tmp_path, seed=seed) for seed in range(annotators)]

    served = defaultdict(list)           # case id -> annotators it was handed to
    saved = []                           # (annotator, case id, correction id, version)
    failures = []
    lock = threading.Lock()

    with app_server(db_path) as (url, _process):
        def work(index):
            name = f"annotator-{index}"
            try:
                client = client_for(url)
                for _ in range(saves_each):
                    case, _image = client.predict(name, "foreground_entropy", api_name="/next_case")
                    with lock:
                        served[case["case_id"]].append(name)
                    result = client.predict(case["case_id"], handle_file(str(masks[index])), name, "corrected",
                                            case["prediction_id"], api_name="/save_correction")
                    with lock:
                        saved.append((name, result["case_id"], result["correction_id"], result["version"]))
            except Exception as exc:  # reported below with the annotator's name
                with lock:
                    failures.append(f"{name}: {exc!r}")

        threads = [threading.Thread(target=work, args=(index,)) for index in range(annotators)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        elapsed = time.perf_counter() - started

    assert not failures, failures
    assert len(saved) == annotators * saves_each
    doubles = {case: names for case, names in served.items() if len(names) > 1}
    assert not doubles, f"cases served to more than one annotator: {doubles}"
    print(f"\n{len(saved)} saves by {annotators} annotators in {elapsed:.1f} s")

    connection = sqlite3.connect(db_path)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = connection.execute("SELECT id, case_id, annotator, version, mask_path FROM corrections").fetchall()
        statuses = dict(connection.execute("SELECT status, count(*) FROM cases GROUP BY status").fetchall())
    finally:
        connection.close()
    by_id = {row[0]: row for row in rows}
    for annotator, case_id, correction_id, version in saved:
        row = by_id[correction_id]
        assert (row[1], row[2], row[3]) == (case_id, annotator, version) == (case_id, annotator, 1)
    assert len(rows) == annotators * saves_each
    assert statuses == {"corrected": annotators * saves_each, "unreviewed": 16}
    store = AnnotationStore(db_path)
    expected = cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE) > 127
    first = next(row for row in rows if row[2] == "annotator-0")
    assert np.array_equal(store.load_mask(first[4]), expected)


def queued_db(tmp_path, count):
    """A database file holding `count` unreviewed cases with predictions by the demo model (so the
    server ranks them as they are instead of re-scoring them in the background)."""
    db_path = tmp_path / "db" / "annotations.db"
    store = demo_database(db_path)
    fill_queue(store, count)
    store.close()
    return db_path


def test_killing_the_server_mid_save_loses_no_committed_correction(tmp_path):
    db_path = queued_db(tmp_path, 120)
    mask = mask_file(tmp_path)
    acknowledged = []
    stop = threading.Event()
    lock = threading.Lock()

    with app_server(db_path) as (url, process):
        def work(index):
            client = client_for(url)
            name = f"writer-{index}"
            while not stop.is_set():
                try:
                    case, _ = client.predict(name, "random", api_name="/next_case")
                    result = client.predict(case["case_id"], handle_file(str(mask)), name, "corrected", None,
                                            api_name="/save_correction")
                except Exception:
                    return  # the server is gone
                with lock:
                    acknowledged.append(result["correction_id"])

        threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while len(acknowledged) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)  # saves are in flight right now
        process.wait()
        stop.set()
        for thread in threads:
            thread.join(timeout=120)

    assert len(acknowledged) >= 30
    store = AnnotationStore(db_path)
    assert store.integrity_check() == "ok"
    rows = {row["id"]: row for row in store.corrections(latest_only=False)}
    missing = [cid for cid in acknowledged if cid not in rows]
    assert not missing, f"acknowledged corrections lost: {missing}"
    for correction_id in acknowledged:
        assert store.load_mask(rows[correction_id]["mask_path"]).any()
    # The database keeps working after the crash: a restarted server serves and saves again.
    with app_server(db_path) as (url, _process):
        client = client_for(url)
        case, _ = client.predict("after-crash", "foreground_entropy", api_name="/next_case")
        result = client.predict(case["case_id"], handle_file(str(mask)), "after-crash", "corrected", None,
                                api_name="/save_correction")
        assert result["version"] == 1


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    db_path = folder / "db" / "annotations.db"
    with app_server(db_path) as (url, _process):
        yield url, db_path, folder


def test_segment_endpoint_returns_maps_and_stores_the_case(live):
    url, db_path, folder = live
    client = client_for(url)
    summary, mask_path, maps_path = client.predict(
        handle_file(str(EXAMPLE)), PROMPT, 8, 0.5, "carol", True, api_name="/segment")
    image = cv2.imread(str(EXAMPLE))
    mask = cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE)
    maps = np.load(maps_path)
    assert mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 255}
    assert maps["entropy"].shape == image.shape[:2]
    assert float(maps["entropy"].max()) <= np.log(2) + 1e-5
    assert summary["model_id"].startswith("demo-tiny@") and summary["num_samples"] == 8
    assert summary["added_to_queue"] is True
    assert set(summary["scores"]) >= {"mean_entropy", "mean_entropy_foreground", "mean_entropy_boundary"}
    store = AnnotationStore(db_path)
    case = store.get_case(summary["case_id"])
    assert case.original_name == "brain_mri.png" and case.assigned_to == "carol" and case.source == "api"
    assert store.latest_prediction_id(case.id) == summary["prediction_id"]


def test_segment_endpoint_stores_nothing_unless_asked(live):
    """Checking a held-out image must not put it in the review queue (and so in an export)."""
    url, db_path, _ = live
    store = AnnotationStore(db_path)
    before = store.counts()
    summary, mask_path, maps_path = client_for(url).predict(handle_file(str(EXAMPLE)), PROMPT, samples=4,
                                                            api_name="/segment")
    assert (summary["case_id"], summary["prediction_id"], summary["added_to_queue"]) == (None, None, False)
    assert cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE).shape == cv2.imread(str(EXAMPLE)).shape[:2]
    assert np.load(maps_path)["probability"].shape == cv2.imread(str(EXAMPLE)).shape[:2]
    assert store.counts() == before


def test_skip_and_ingest_endpoints(live, tmp_path):
    url, db_path, _ = live
    client = client_for(url)
    store = AnnotationStore(db_path)
    images = [ROOT / "assets" / "examples" / name for name in ("dermoscopy.png", "chest_xray.png")]
    report = client.predict([handle_file(str(path)) for path in images], "A lesion in the image.",
                            batch="api-batch", samples=4, api_name="/ingest")
    assert len(report["added"]) == 2 and not report["failed"] and report["summary"].startswith("2 images added")
    assert {store.get_case(case_id).batch for case_id in report["added"]} == {"api-batch"}
    result = client.predict(report["added"][0], "ivan", api_name="/skip")
    assert result == {"case_id": report["added"][0], "status": "skipped", "annotator": "ivan"}
    assert store.get_case(report["added"][0]).status == "skipped"
    # save_correction with the status 'skipped', as the UI's Skip button does, works too.
    result = client.predict(report["added"][1], None, "ivan", "skipped", api_name="/save_correction")
    assert result["status"] == "skipped" and store.get_case(report["added"][1]).status == "skipped"


def test_skip_asks_before_dropping_saved_work_and_unskip_undoes_it(live, tmp_path):
    url, db_path, _ = live
    client = client_for(url)
    store = AnnotationStore(db_path)
    held, saved = fill_queue(store, 2, seed=60)
    assert store.claim(held, annotator="bob")
    message = refusal(client, held, "ivan", api_name="/skip")
    assert "bob" in message and store.get_case(held).status == "unreviewed"
    store.skip(held, annotator="bob")  # out of the shared queue of later tests

    mask = np.zeros((48, 64), bool)
    mask[10:20, 10:30] = True
    store.save_correction(saved, mask, annotator="judy")
    message = refusal(client, saved, "ivan", api_name="/skip")
    assert "v1" in message and "judy" in message and "export" in message and "discard_saved" in message
    assert store.get_case(saved).status == "corrected"
    assert "true or false" in refusal(client, saved, "ivan", "perhaps", api_name="/skip")
    result = client.predict(saved, "ivan", True, api_name="/skip")
    assert result == {"case_id": saved, "status": "skipped", "annotator": "ivan"}
    assert store.get_case(saved).status == "skipped"

    result = client.predict(saved, "ivan", api_name="/unskip")
    assert result == {"case_id": saved, "status": "corrected", "annotator": "ivan"}
    assert store.get_case(saved).status == "corrected"
    assert "not skipped" in refusal(client, saved, "ivan", api_name="/unskip")
    assert "No case given" in refusal(client, None, "ivan", api_name="/unskip")
    assert "annotator name is required" in refusal(client, saved, "", api_name="/unskip")


def test_endpoint_errors_are_clear_and_write_nothing(live, tmp_path):
    url, db_path, _ = live
    client = client_for(url)
    store = AnnotationStore(db_path)
    before = store.counts()
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(Exception, match="not a recognised image"):
        client.predict(handle_file(str(bad)), "a lesion", 8, 0.5, "carol", api_name="/segment")
    with pytest.raises(Exception, match="Prompt is empty"):
        client.predict(handle_file(str(EXAMPLE)), "  ", 8, 0.5, "carol", api_name="/segment")
    with pytest.raises(Exception, match="name"):
        client.predict(1, handle_file(str(mask_file(tmp_path))), "", "corrected", None, api_name="/save_correction")
    assert store.counts() == before


def refusal(client, *args, api_name, **kwargs) -> str:
    with pytest.raises(Exception) as refused:
        client.predict(*args, api_name=api_name, **kwargs)
    return str(refused.value)


def test_bad_requests_are_answered_in_words(live, tmp_path):
    url, db_path, _ = live
    client = client_for(url)
    store = AnnotationStore(db_path)
    before = store.counts()
    message = refusal(client, None, PROMPT, api_name="/segment")
    assert "No image given" in message and "NoneType" not in message
    message = refusal(client, handle_file(str(EXAMPLE)), PROMPT, 100_000, api_name="/segment")
    assert "between 1 and 64" in message
    message = refusal(client, handle_file(str(EXAMPLE)), PROMPT, 8, 1.5, api_name="/segment")
    assert "threshold must lie strictly between 0 and 1" in message
    message = refusal(client, str(EXAMPLE), PROMPT, api_name="/segment")
    assert "as a file" in message  # a text path could point anywhere on the server
    message = refusal(client, None, handle_file(str(mask_file(tmp_path))), "dave", api_name="/save_correction")
    assert "No case given" in message and "int()" not in message
    message = refusal(client, "seven", None, "dave", "accepted", api_name="/save_correction")
    assert "case_id must be a whole number" in message
    case_id = fill_queue(store, 1, seed=7)[0]
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    message = refusal(client, case_id, handle_file(str(notes)), "dave", api_name="/save_correction")
    assert "'notes.png' is not a readable image" in message
    assert tempfile.gettempdir() not in message and "gradio" not in message
    message = refusal(client, case_id, None, "dave", "corrected", api_name="/save_correction")
    assert "Send the corrected mask" in message
    message = refusal(client, case_id, None, "dave", "finished", api_name="/save_correction")
    assert "status must be one of corrected, accepted, skipped" in message
    assert "No case given" in refusal(client, None, "dave", api_name="/skip")
    assert "Unknown case order" in refusal(client, "dave", "loudest", api_name="/next_case")
    assert "annotator name is required" in refusal(client, "", api_name="/next_case")
    assert "Choose images" in refusal(client, [], "A lesion.", api_name="/ingest")
    store.set_status(case_id, "skipped", annotator="dave")  # out of the shared queue of later tests
    after = store.counts()
    assert after["corrections"] == before["corrections"] and after["predictions"] == before["predictions"] + 1


def test_dicom_identifiers_never_stored_or_exported(live, tmp_path):
    """Ingest (library queue), segment (API), correct, export: the identifiers appear nowhere."""
    from medclipseg.annotation.ingest import ingest
    from medclipseg.inference.predictor import Predictor

    url, db_path, folder = live
    dicom_folder = tmp_path / "incoming"
    dicom_folder.mkdir()
    write_dicom(dicom_folder / "scan-0001.dcm", size=96)
    write_dicom(tmp_path / "scan-0002.dcm", size=80)

    store = AnnotationStore(db_path)
    report = ingest(store, Predictor.from_pretrained(), dicom_folder, prompt="A round lesion in the CT slice.",
                    num_samples=4)
    assert len(report.added) == 1 and not report.failed, report.summary()

    client = client_for(url)
    summary, _mask, _maps = client.predict(handle_file(str(tmp_path / "scan-0002.dcm")),
                                           "A round lesion in the CT slice.", 4, 0.5, "dave", True,
                                           api_name="/segment")
    mask = tmp_path / "dicom-mask.png"
    cv2.imwrite(str(mask), np.pad(np.full((20, 20), 255, np.uint8), 30))
    client.predict(summary["case_id"], handle_file(str(mask)), "dave", "corrected", None, api_name="/save_correction")
    queued = client.predict("dave", "image_entropy", api_name="/next_case")[0]
    assert queued["case_id"] == report.added[0]
    client.predict(queued["case_id"], handle_file(str(mask_file(tmp_path, 96, 96))), "dave", "corrected", None,
                   api_name="/save_correction")
    case = store.get_case(summary["case_id"])
    assert case.metadata.get("modality") == "CT" and case.metadata.get("pixel_spacing") == [0.7, 0.7]

    zip_path, _message = client.predict(0.0, 0.0, 0, api_name="/export")
    exported = {}
    with zipfile.ZipFile(zip_path) as archive:
        for member in archive.namelist():
            exported[member] = archive.read(member)
    manifest = json.loads(next(data for name, data in exported.items() if name.endswith("manifest.json")))
    assert {entry["case_id"] for entry in manifest["cases"]} >= {summary["case_id"], queued["case_id"]}

    secrets = [PATIENT_NAME, PATIENT_ID, "DOE^JANE", "8675309", "Saint Example Hospital", "ACC-445566", "19700101"]
    beside_db = {str(p): p.read_bytes() for p in Path(db_path).parent.rglob("*") if p.is_file()}
    assert any(name.endswith(".db") for name in beside_db)
    for where, blobs in (("database folder", beside_db), ("export", exported)):
        for name, data in blobs.items():
            for secret in secrets:
                for encoded in (secret.encode(), secret.encode("utf-16-le")):
                    assert encoded not in data, f"{secret!r} found in {where}: {name}"


def test_login_names_the_annotator(tmp_path):
    db_path = queued_db(tmp_path, 3)
    mask = mask_file(tmp_path)
    with app_server(db_path, env={"MEDCLIPSEG_AUTH": "erin:secret-1,frank:secret-2"}) as (url, _process):
        with pytest.raises(Exception):
            client_for(url, auth=("erin", "wrong"))
        client = client_for(url, auth=("erin", "secret-1"))
        case, _ = client.predict("someone-else", "foreground_entropy", api_name="/next_case")
        assert case["assigned_to"] == "erin"
        result = client.predict(case["case_id"], handle_file(str(mask)), "someone-else", "corrected", None,
                                api_name="/save_correction")
        assert result["annotator"] == "erin"


def wait_for(condition, *, timeout, interval=0.5, what="the condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def test_model_endpoints_retrain_promote_rollback(tmp_path):
    """Retrain through the API (a real worker, one epoch), then promote, re-score and roll back."""
    from medclipseg.app.api import API_NAMES

    db_path = tmp_path / "db" / "annotations.db"
    store = demo_database(db_path)
    base = store.current_model_id()
    store.set_gold_fraction(0.0)
    reviewed = fill_queue(store, 3, seed=10)
    waiting = fill_queue(store, 3, seed=20)
    for case_id in reviewed:
        mask = np.zeros((48, 64), bool)
        mask[8:30, 10:44] = True
        store.save_correction(case_id, mask, annotator="alice", status="corrected")

    with app_server(db_path) as (url, _process):
        client = client_for(url)
        listed = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
        assert {f"/{name}" for name in API_NAMES} <= listed
        versions = client.predict(api_name="/models")
        assert [(v["id"], v["current"], v["kind"]) for v in versions] == [(base, True, "base")]
        assert client.predict(api_name="/job") == {"job_id": None, "status": None,
                                                   "message": "No retraining has run yet."}
        assert "annotator name is required" in refusal(client, 1, "no", "", api_name="/retrain")
        assert "Choose a model version" in refusal(client, "", "alice", api_name="/promote")
        assert "no earlier model version" in refusal(client, "alice", api_name="/rollback")
        assert "No retraining is running" in refusal(client, None, "alice", api_name="/cancel_job")
        assert "between 1 and 500" in refusal(client, 0, "no", "alice", api_name="/retrain")

        started = client.predict(1, "no", "alice", api_name="/retrain")
        assert (started["train_cases"], started["gold_cases"], started["epochs"], started["promote"]) == (3, 0, 1, "no")
        assert started["estimate_seconds"] is None and "no estimate until the first round" in started["message"]
        assert "already running" in refusal(client, 1, "no", "bob", api_name="/retrain")
        job = wait_for(lambda: (lambda j: j if j["status"] != "running" else None)(client.predict(api_name="/job")),
                       timeout=240, interval=1.0, what="the retraining job")
        assert job["job_id"] == started["job_id"] and job["status"] == "succeeded", job
        assert job["progress"] == 1.0 and job["version_id"] and job["created_by"] == "alice"
        assert f"version {job['version_id']} recorded; not promoted" in job["log_tail"]
        assert client.predict(started["job_id"], api_name="/job")["version_id"] == job["version_id"]

        versions = client.predict(api_name="/models")
        new = versions[-1]
        assert [v["id"] for v in versions] == [base, job["version_id"]] and new["id"] == job["version_id"]
        assert (new["current"], new["kind"], new["parent_id"], new["train_cases"], new["created_by"]) == (
            False, "trained", base, 3, "alice")

        promoted = client.predict(new["id"], "bob", api_name="/promote")
        assert promoted["current"] == promoted["serving"] == new["id"], promoted
        assert "3 case(s) will be re-scored" in promoted["message"]
        # The server's background re-scoring ranks the waiting cases by the promoted version.
        wait_for(lambda: store.rescore_backlog(new["id"]) == 0, timeout=120, what="re-scoring")
        for case_id in waiting:
            assert store.load_prediction(store.latest_prediction_id(case_id)).model_id == new["id"]
        case, _image = client.predict("carol", "expected_dice_miss", api_name="/next_case")
        assert case["case_id"] in waiting and case["model_id"] == new["id"]
        summary, _mask, _maps = client.predict(handle_file(str(EXAMPLE)), PROMPT, 4, api_name="/segment")
        assert summary["model_id"] == new["id"]

        rolled = client.predict("bob", api_name="/rollback")
        assert rolled["current"] == rolled["serving"] == base
        assert [v["current"] for v in client.predict(api_name="/models")] == [True, False]


def test_server_killed_mid_retrain_finds_the_job_after_restart(tmp_path):
    """Killing the server does not stop the worker (its own session): after a restart the job is
    still reported running; when the worker dies too, the restarted server reports it failed and
    nothing it trained can be promoted."""
    from medclipseg.annotation.jobs import process_alive

    db_path = tmp_path / "db" / "annotations.db"
    store = demo_database(db_path)
    base = store.current_model_id()
    store.set_gold_fraction(0.0)
    for case_id in fill_queue(store, 3, seed=30):
        mask = np.zeros((48, 64), bool)
        mask[10:30, 12:40] = True
        store.save_correction(case_id, mask, annotator="alice", status="corrected")

    with app_server(db_path) as (url, server):
        started = client_for(url).predict(400, "yes", "alice", api_name="/retrain")
        wait_for(lambda: "epoch" in store.job(started["job_id"]).message, timeout=240, what="training to start")
        worker = store.job(started["job_id"]).pid
        server.kill()  # no clean-up at all, as a crash or an OOM kill
        server.wait()
    assert process_alive(worker)

    with app_server(db_path) as (url, _server):
        client = client_for(url)
        job = client.predict(api_name="/job")
        assert (job["job_id"], job["status"]) == (started["job_id"], "running")
        os.killpg(worker, signal.SIGKILL)  # the machine goes down: the worker dies as well
        job = wait_for(lambda: (lambda j: j if j["status"] != "running" else None)(client.predict(api_name="/job")),
                       timeout=60, interval=1.0, what="the dead worker to be noticed")
        assert job["status"] == "failed" and "did not finish" in job["message"]
        assert [v["id"] for v in client.predict(api_name="/models")] == [base]
        assert "no model version" in refusal(client, "tiny@000000000000", "bob", api_name="/promote")
    assert not store.models_dir.exists() or not any(store.models_dir.iterdir())
