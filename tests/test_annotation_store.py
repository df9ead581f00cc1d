"""`medclipseg.annotation.store`: the annotation store on real SQLite files (schema, privacy, queue, concurrency, crashes)."""
from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from medclipseg.inference.predictor import Prediction
from medclipseg.annotation.store import (
    ACQUISITION_SCORES,
    SCHEMA_VERSION,
    AnnotationStore,
    StorageError,
    default_db_path,
)
from app_support import prediction_from_probability

REPO = Path(__file__).resolve().parent.parent


def _image(seed: int, shape=(24, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def _prediction(shape=(24, 32), seed: int = 0, prompt: str = "a round lesion", scores=None,
                threshold: float = 0.5) -> Prediction:
    """A real Prediction built by hand; probabilities avoid 0.3 and 0.5 so float16 storage cannot flip masks."""
    rng = np.random.default_rng(seed)
    probability = rng.choice(np.array([0.05, 0.2, 0.4, 0.6, 0.8, 0.95], np.float32), size=shape).astype(np.float32)
    return prediction_from_probability(probability, mutual_fraction=rng.uniform(0.1, 0.5, size=shape),
                                       threshold=threshold, prompt=prompt, model_id="test-model", num_samples=4,
                                       seconds=0.01, scores=scores,
                                       conversions=["grey image replicated to 3 channels"])


def _case_with_prediction(store, seed, *, prompt="a round lesion", scores=None, batch=None, shape=(24, 32)):
    case = store.add_case(_image(seed, shape), prompt=prompt, original_name=f"img_{seed}.png", batch=batch)
    prediction_id = store.add_prediction(case.id, _prediction(shape, seed, prompt, scores))
    return case, prediction_id


def _files(store) -> list:
    return sorted(p for p in store.files_dir.rglob("*") if p.is_file())


@pytest.fixture()
def store(tmp_path):
    store = AnnotationStore(tmp_path / "annotations.db")
    yield store
    store.close()


# ------------------------------------------------------------------------------ schema


def test_schema_created_in_wal_mode(tmp_path):
    path = tmp_path / "sub" / "annotations.db"
    with AnnotationStore(path) as store:
        assert store.path == path and path.is_file()
        assert store.files_dir == tmp_path / "sub" / "annotations_files"
        assert all((store.files_dir / sub).is_dir() for sub in ("images", "maps", "masks"))
        assert store.schema_version == SCHEMA_VERSION == 1
        assert store.integrity_check() == "ok"
        assert store.counts() == {"unreviewed": 0, "corrected": 0, "accepted": 0, "skipped": 0,
                                  "corrections": 0, "predictions": 0}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meta", "cases", "predictions", "corrections"} <= tables
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert len(indexes) >= 10
    columns = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
    assert set(ACQUISITION_SCORES.values()) - {"random_key"} <= columns
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
    conn.close()


def test_reopen_keeps_data(tmp_path):
    path = tmp_path / "annotations.db"
    with AnnotationStore(path) as store:
        case, _ = _case_with_prediction(store, 1)
    with AnnotationStore(path) as again:
        assert again.get_case(case.id) == case
        assert again.counts()["predictions"] == 1
        np.testing.assert_array_equal(again.load_image(case.id), _image(1))


def test_newer_schema_refused(tmp_path):
    path = tmp_path / "annotations.db"
    AnnotationStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="schema version 7, newer"):
        AnnotationStore(path)


def test_migration_from_version_zero(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '0')")
    conn.commit()
    conn.close()
    with AnnotationStore(path) as store:
        assert store.schema_version == 1
        case, _ = _case_with_prediction(store, 2)
        assert store.get_case(case.id).status == "unreviewed"


def test_not_a_database(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not sqlite " * 100)
    with pytest.raises(StorageError, match="Could not"):
        AnnotationStore(path)


def test_default_db_path(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDCLIPSEG_DB", str(tmp_path / "x.db"))
    assert default_db_path() == tmp_path / "x.db"
    monkeypatch.delenv("MEDCLIPSEG_DB")
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert default_db_path() == REPO / "feedback_db" / "annotations.db"


# ------------------------------------------------------------------------------- cases


def test_add_case_dedupes_on_pixels_and_prompt(store):
    first = store.add_case(_image(3), prompt="a round lesion", original_name="a.png", batch="b1")
    again = store.add_case(_image(3).copy(), prompt="  a round lesion ", original_name="renamed.png")
    assert again.id == first.id and again.original_name == "a.png"
    other_prompt = store.add_case(_image(3), prompt="the left kidney", original_name="a.png")
    assert other_prompt.id != first.id and other_prompt.content_hash == first.content_hash
    other_pixels = store.add_case(_image(4), prompt="a round lesion", original_name="b.png")
    assert other_pixels.content_hash != first.content_hash
    assert store.counts()["unreviewed"] == 3
    assert len(list((store.files_dir / "images").glob("*.png"))) == 2  # content-addressed
    assert (first.width, first.height, first.status, first.batch, first.source) == (32, 24, "unreviewed", "b1",
                                                                                  "upload")
    np.testing.assert_array_equal(store.load_image(first.id), _image(3))
    with pytest.raises(StorageError, match="does not exist"):
        store.get_case(999)
    with pytest.raises(StorageError, match="8-bit colour"):
        store.add_case(np.zeros((8, 8), np.uint8), prompt="x", original_name="g.png")
    with pytest.raises(StorageError, match="Prompt is empty"):
        store.add_case(_image(5), prompt="   ", original_name="e.png")
    with pytest.raises(StorageError, match="source"):
        store.add_case(_image(5), prompt="x", original_name="e.png", source="email")


def test_metadata_whitelist_keeps_identifiers_out(store):
    metadata = {"PatientName": "DOE^JANE", "PatientID": "ID-12345", "patient_birth_date": "19700101",
                "modality": "CT", "pixel_spacing": (0.5, 0.75), "window_center": np.float32(40),
                "window_width": 400.0, "photometric_interpretation": "MONOCHROME2",
                "conversions": ["window applied (header: center 40, width 400)"]}
    case = store.add_case(_image(6), prompt="the liver", original_name="scan.dcm", metadata=metadata)
    prediction_id = store.add_prediction(case.id, _prediction(seed=6, prompt="the liver"))
    store.save_correction(case.id, np.ones((24, 32), bool), annotator="alice", prediction_id=prediction_id)
    assert case.metadata == {"modality": "CT", "pixel_spacing": [0.5, 0.75], "window_center": 40.0,
                             "window_width": 400.0, "photometric_interpretation": "MONOCHROME2",
                             "conversions": ["window applied (header: center 40, width 400)"]}
    assert store.corrections()[0]["metadata"] == case.metadata
    blobs = [store.path, Path(f"{store.path}-wal"), *_files(store)]
    assert Path(f"{store.path}-wal").is_file()
    for path in blobs:
        if path.is_file():
            data = path.read_bytes()
            for secret in (b"DOE^JANE", b"ID-12345", b"19700101", b"PatientName"):
                assert secret not in data, (secret, path)


# ------------------------------------------------------------------------- predictions


def test_prediction_round_trip(store):
    case = store.add_case(_image(7), prompt="a round lesion", original_name="p.png",
                          metadata={"conversions": ["grey image replicated to 3 channels"]})
    assert store.latest_prediction_id(case.id) is None
    original = _prediction(seed=7)
    first = store.add_prediction(case.id, original)
    second = store.add_prediction(case.id, _prediction(seed=8))
    assert store.latest_prediction_id(case.id) == second > first
    loaded = store.load_prediction(first)
    assert isinstance(loaded, Prediction)
    for name in ("probability", "entropy", "mutual_information"):
        values = getattr(loaded, name)
        assert values.dtype == np.float32 and values.shape == (24, 32)
        np.testing.assert_allclose(values, getattr(original, name), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(loaded.mask, original.mask)
    assert loaded.scores == pytest.approx(original.scores)
    assert (loaded.threshold, loaded.num_samples, loaded.prompt, loaded.model_id) == (0.5, 4, "a round lesion",
                                                                                    "test-model")
    assert loaded.image_shape == (24, 32) and loaded.conversions == ["grey image replicated to 3 channels"]
    rethresholded = loaded.with_threshold(0.3)
    np.testing.assert_array_equal(rethresholded.mask, original.probability > 0.3)
    conn = sqlite3.connect(store.path)
    row = conn.execute("SELECT score_foreground_entropy, score_image_entropy, foreground_pixels FROM predictions "
                       "WHERE id = ?", [first]).fetchone()
    conn.close()
    assert row == (pytest.approx(original.scores["mean_entropy_foreground"]),
                   pytest.approx(original.scores["mean_entropy"]), int(original.mask.sum()))
    with pytest.raises(StorageError, match="shape"):
        store.add_prediction(case.id, _prediction(shape=(10, 10)))
    with pytest.raises(StorageError, match="does not exist"):
        store.load_prediction(12345)


# ------------------------------------------------------------------------- corrections


def test_correction_versions_and_pixel_counts(store):
    case = store.add_case(_image(9, (20, 30)), prompt="a round lesion", original_name="c.png")
    prediction = _prediction((20, 30), seed=9)
    # Predicted: left half (columns < 15). Corrected: top half (rows < 10).
    prediction.probability[:] = 0.1
    prediction.probability[:, :15] = 0.9
    prediction.mask = prediction.probability > 0.5
    prediction_id = store.add_prediction(case.id, prediction)
    corrected = np.zeros((20, 30), np.uint8)
    corrected[:10] = 255
    first = store.save_correction(case.id, corrected, annotator="  alice ")
    # added: top-right quadrant 10 x 15; erased: bottom-left quadrant 10 x 15.
    assert (first.version, first.annotator, first.status) == (1, "alice", "corrected")
    assert (first.pixels_added, first.pixels_erased, first.pixels_changed) == (150, 150, 300)
    assert store.get_case(case.id).status == "corrected"

    accepted = store.save_correction(case.id, prediction.mask.astype(np.float32), annotator="bob",
                                     prediction_id=prediction_id, status="accepted")
    assert (accepted.version, accepted.pixels_changed, accepted.status) == (2, 0, "accepted")
    assert store.get_case(case.id).status == "accepted"

    # Another threshold: the comparison mask is probability > 0.95 (nothing), so every pixel is added.
    third = store.save_correction(case.id, np.ones((20, 30), bool), annotator="carol", threshold=0.95)
    assert (third.version, third.pixels_added, third.pixels_erased) == (3, 600, 0)

    everything = store.corrections(latest_only=False)
    assert [row["version"] for row in everything] == [1, 2, 3]
    assert store.counts()["corrections"] == 3
    latest = store.corrections()
    assert len(latest) == 1 and latest[0]["version"] == 3 and latest[0]["threshold"] == 0.95
    assert latest[0]["original_name"] == "c.png" and (latest[0]["width"], latest[0]["height"]) == (30, 20)
    assert latest[0]["scores"]["foreground_pixels"] == 0
    assert [row["version"] for row in store.corrections(annotator="alice")] == [1]
    assert [row["version"] for row in store.corrections(statuses=("accepted",))] == [2]
    first_row = everything[0]
    np.testing.assert_array_equal(store.load_mask(first_row["mask_path"]), corrected > 0)
    np.testing.assert_array_equal(store.load_mask(first_row["predicted_mask_path"]), prediction.mask)
    assert first_row["prediction_id"] == prediction_id and first_row["model_id"] == "test-model"
    with pytest.raises(StorageError):
        store.load_mask("../annotations.db")


def test_correction_without_prediction(store):
    case = store.add_case(_image(10), prompt="a round lesion", original_name="n.png")
    mask = np.zeros((24, 32), bool)
    mask[2:5, 3:7] = True
    correction = store.save_correction(case.id, mask, annotator="alice")
    assert (correction.pixels_added, correction.pixels_erased) == (12, 0)
    row = store.corrections()[0]
    assert row["prediction_id"] is None and row["scores"] is None
    assert not store.load_mask(row["predicted_mask_path"]).any()


def test_refused_corrections_leave_nothing(store):
    case, prediction_id = _case_with_prediction(store, 11)
    before = _files(store)
    good = np.zeros((24, 32), bool)
    with pytest.raises(StorageError, match="shape"):
        store.save_correction(case.id, np.zeros((32, 24), bool), annotator="alice")
    with pytest.raises(StorageError, match="shape"):
        store.save_correction(case.id, np.zeros((24, 32, 3), np.uint8), annotator="alice")
    with pytest.raises(StorageError, match="annotator"):
        store.save_correction(case.id, good, annotator="   ")
    with pytest.raises(StorageError, match="too long"):
        store.save_correction(case.id, good, annotator="x" * 101)
    with pytest.raises(StorageError, match="status"):
        store.save_correction(case.id, good, annotator="alice", status="skipped")
    with pytest.raises(StorageError, match="between 0 and 255"):
        store.save_correction(case.id, np.full((24, 32), -1.0), annotator="alice")
    other, other_prediction = _case_with_prediction(store, 12)
    before = _files(store)
    with pytest.raises(StorageError, match="belongs to case"):
        store.save_correction(case.id, good, annotator="alice", prediction_id=other_prediction)
    assert _files(store) == before
    assert store.counts()["corrections"] == 0
    assert store.get_case(case.id).status == "unreviewed"


# ------------------------------------------------------------------------------- queue

# Scores per case (foreground, boundary, mutual information, image): every order differs.
QUEUE_SCORES = [(0.1, 0.4, 0.3, 0.2), (0.4, 0.1, 0.2, 0.3), (0.3, 0.2, 0.1, 0.4), (0.2, 0.3, 0.4, 0.1)]
SCORE_KEYS = ("mean_entropy_foreground", "mean_entropy_boundary", "mean_mutual_information", "mean_entropy")


def _queue(store, count=4, batch=None, offset=0):
    cases = []
    for index in range(count):
        scores = dict(zip(SCORE_KEYS, QUEUE_SCORES[index % 4]))
        case, _ = _case_with_prediction(store, 100 + offset + index, scores=scores, batch=batch)
        cases.append(case)
    return cases


@pytest.mark.parametrize("acquisition", ["foreground_entropy", "boundary_entropy", "mutual_information",
                                         "image_entropy"])
def test_next_case_orders_by_score(store, acquisition):
    cases = _queue(store)
    column = list(ACQUISITION_SCORES).index(acquisition)
    expected = [cases[i].id for i in sorted(range(4), key=lambda i: -QUEUE_SCORES[i][column])]
    # Four annotators in turn: each lease is live, so each gets the next case in score order.
    served = [store.next_case(f"annotator{i}", acquisition=acquisition).id for i in range(4)]
    assert served == expected
    assert store.next_case("annotator4", acquisition=acquisition) is None
    assert store.get_case(expected[0]).assigned_to == "annotator0"


def test_next_case_random_baseline_and_statuses(store):
    cases = _queue(store, 6)
    no_prediction = store.add_case(_image(999), prompt="a round lesion", original_name="np.png")
    store.set_status(cases[0].id, "skipped", annotator="alice")
    store.save_correction(cases[1].id, np.zeros((24, 32), bool), annotator="alice", status="accepted")
    store.save_correction(cases[2].id, np.zeros((24, 32), bool), annotator="alice")
    conn = sqlite3.connect(store.path)
    keys = dict(conn.execute("SELECT id, random_key FROM cases").fetchall())
    conn.close()
    expected = sorted((c.id for c in cases[3:]), key=lambda i: -keys[i])
    served = [store.next_case(f"a{i}", acquisition="random").id for i in range(3)]
    assert served == expected
    assert store.next_case("a3", acquisition="random") is None
    assert no_prediction.id not in served
    with pytest.raises(StorageError, match="Unknown case order"):
        store.next_case("alice", acquisition="loudest")
    counts = store.counts()
    assert (counts["skipped"], counts["accepted"], counts["corrected"], counts["unreviewed"]) == (1, 1, 1, 4)


def test_next_case_same_annotator_batch_and_release(store):
    first_batch = _queue(store, 2, batch="week1")
    second_batch = _queue(store, 2, batch="week2", offset=50)
    case = store.next_case("alice", batch="week2")
    assert case.id in {c.id for c in second_batch} and case.batch == "week2"
    # Asking again re-serves alice's own lease (one lease per annotator), not a new case.
    assert store.next_case("alice", batch="week2").id == case.id
    other = store.next_case("bob", batch="week2")
    assert other.id != case.id
    assert store.next_case("carol", batch="week2") is None
    store.release(case.id, annotator="bob")  # not bob's lease: no effect
    assert store.next_case("carol", batch="week2") is None
    store.release(case.id, annotator="alice")
    assert store.next_case("carol", batch="week2").id == case.id
    daves = store.next_case("dave", batch="week1")
    assert daves.id == first_batch[1].id  # the higher foreground score
    # claim: an uploaded case is leased to its uploader and kept from others.
    assert store.claim(first_batch[0].id, annotator="erin") is True
    assert store.claim(first_batch[0].id, annotator="frank") is False
    assert store.claim(daves.id, annotator="frank") is False
    assert store.next_case("frank", batch="week1") is None
    assert store.claim(first_batch[0].id, annotator="erin") is True  # own lease: renewed


def test_lease_expiry(tmp_path):
    with AnnotationStore(tmp_path / "annotations.db", lease_seconds=0.05) as store:
        (case,) = _queue(store, 1)
        assert store.next_case("alice").id == case.id
        assert store.next_case("bob") is None
        time.sleep(0.1)
        assert store.next_case("bob").id == case.id
        assert store.get_case(case.id).assigned_to == "bob"


# ------------------------------------------------------------------------- concurrency


def test_concurrent_threads_and_second_store(tmp_path):
    path = tmp_path / "annotations.db"
    store = AnnotationStore(path)
    threads_count, rounds = 8, 25
    for index in range(threads_count * rounds):
        _case_with_prediction(store, 1000 + index, shape=(8, 8),
                              scores={"mean_entropy_foreground": random.Random(index).random()})
    shared = store.add_case(_image(5000, (8, 8)), prompt="shared case", original_name="shared.png")
    second = AnnotationStore(path)  # like a second process
    served, errors = [], []
    barrier = threading.Barrier(threads_count)

    def work(worker: int) -> None:
        target = store if worker % 2 == 0 else second
        annotator = f"annotator{worker}"
        rng = np.random.default_rng(worker)
        try:
            barrier.wait()
            for _ in range(rounds):
                acquisition = str(rng.choice(list(ACQUISITION_SCORES)))
                case = target.next_case(annotator, acquisition=acquisition)
                assert case is not None and case.assigned_to == annotator
                served.append(case.id)
                target.save_correction(case.id, rng.random((8, 8)) > 0.5, annotator=annotator)
                target.save_correction(shared.id, rng.random((8, 8)) > 0.5, annotator=annotator)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    total = threads_count * rounds
    # Each served case was corrected at once, so serving one twice would mean two annotators got it.
    assert len(served) == total and len(set(served)) == total
    conn = sqlite3.connect(path)
    versions = [row[0] for row in conn.execute("SELECT version FROM corrections WHERE case_id = ? ORDER BY version",
                                               [shared.id])]
    assert versions == list(range(1, total + 1))
    assert conn.execute("SELECT count(*) FROM corrections").fetchone()[0] == 2 * total
    assert conn.execute("SELECT count(*) FROM (SELECT case_id, version FROM corrections "
                        "GROUP BY case_id, version HAVING count(*) > 1)").fetchone()[0] == 0
    conn.close()
    assert store.counts()["corrected"] == total + 1 and store.counts()["unreviewed"] == 0
    assert store.next_case("late") is None
    assert store.integrity_check() == "ok" and second.integrity_check() == "ok"
    second.close()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.counts()


# ------------------------------------------------------------------------ crash safety

CRASH_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from medclipseg.annotation.store import AnnotationStore

    store = AnnotationStore(sys.argv[1])
    case_id = int(sys.argv[2])
    rng = np.random.default_rng(0)
    print("ready", flush=True)
    index = 0
    while True:
        index += 1
        store.add_case(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8), prompt="crash test",
                       original_name=f"c{index}.png")
        correction = store.save_correction(case_id, rng.random((32, 32)) > 0.5, annotator="crasher")
        print(correction.id, flush=True)
""")


def test_crash_mid_write_keeps_committed_corrections(tmp_path):
    path = tmp_path / "annotations.db"
    with AnnotationStore(path) as store:
        case, _ = _case_with_prediction(store, 77, shape=(32, 32))
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    process = subprocess.Popen([sys.executable, str(script), str(path), str(case.id)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=REPO)
    committed = []
    try:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
        while len(committed) < 40:
            line = process.stdout.readline()
            assert line, process.stderr.read()
            committed.append(int(line.split()[0]))
        time.sleep(random.Random(1).uniform(0.0, 0.05))  # land somewhere inside a write
    finally:
        process.send_signal(signal.SIGKILL)
        rest, _ = process.communicate(timeout=30)
    committed += [int(line.split()[0]) for line in rest.splitlines() if line.strip()]
    assert process.returncode == -signal.SIGKILL

    with AnnotationStore(path) as reopened:
        assert reopened.integrity_check() == "ok"
        rows = {row["id"]: row for row in reopened.corrections(latest_only=False)}
        assert set(committed) <= set(rows)
        for correction_id in committed:
            assert reopened.load_mask(rows[correction_id]["mask_path"]).shape == (32, 32)
            assert reopened.load_mask(rows[correction_id]["predicted_mask_path"]).shape == (32, 32)
        assert sorted(row["version"] for row in rows.values()) == list(range(1, len(rows) + 1))
        # The store still takes writes after the crash.
        assert reopened.save_correction(case.id, np.zeros((32, 32), bool), annotator="after").version == len(rows) + 1
    for row_path in (path.parent / "annotations_files" / "masks").glob("*.png"):
        assert row_path.stat().st_size > 0
