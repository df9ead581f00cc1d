"""`medclipseg.annotation.store`: the AnnotationStore facade on real SQLite files (cases, privacy, predictions, corrections)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from annotation_support import sql_connection, case_with_prediction, image, prediction, stored_files
from app_support import prediction_from_probability
from medclipseg.annotation.queue import ACQUISITION_SCORES
from medclipseg.annotation.store import (
    SCHEMA_VERSION,
    AnnotationStore,
    StorageError,
    default_db_path,
)
from medclipseg.inference.predictor import Prediction

REPO = Path(__file__).resolve().parent.parent


def test_public_names_still_importable_from_store():
    assert SCHEMA_VERSION == 10 and "random" in ACQUISITION_SCORES and issubclass(StorageError, RuntimeError)
    assert callable(AnnotationStore.queue_summary)


def test_default_db_path(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDCLIPSEG_DB", str(tmp_path / "x.db"))
    assert default_db_path() == tmp_path / "x.db"
    monkeypatch.delenv("MEDCLIPSEG_DB")
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert default_db_path() == REPO / "feedback_db" / "annotations.db"


# ------------------------------------------------------------------------------- cases


def test_add_case_dedupes_on_pixels_and_prompt(store):
    first = store.add_case(image(3), prompt="a round lesion", original_name="a.png", batch="b1")
    again = store.add_case(image(3).copy(), prompt="  a round lesion ", original_name="renamed.png")
    assert again.id == first.id and again.original_name == "a.png"
    other_prompt = store.add_case(image(3), prompt="the left kidney", original_name="a.png")
    assert other_prompt.id != first.id and other_prompt.content_hash == first.content_hash
    other_pixels = store.add_case(image(4), prompt="a round lesion", original_name="b.png")
    assert other_pixels.content_hash != first.content_hash
    assert store.counts()["unreviewed"] == 3
    assert len(list((store.files_dir / "images").glob("*.png"))) == 2  # content-addressed
    assert (first.width, first.height, first.status, first.batch, first.source) == (32, 24, "unreviewed", "b1",
                                                                                  "upload")
    np.testing.assert_array_equal(store.load_image(first.id), image(3))
    with pytest.raises(StorageError, match="does not exist"):
        store.get_case(999)
    with pytest.raises(StorageError, match="does not exist"):
        store.load_image(999)
    with pytest.raises(StorageError, match="8-bit colour"):
        store.add_case(np.zeros((8, 8), np.uint8), prompt="x", original_name="g.png")
    with pytest.raises(StorageError, match="Prompt is empty"):
        store.add_case(image(5), prompt="   ", original_name="e.png")
    with pytest.raises(StorageError, match="source"):
        store.add_case(image(5), prompt="x", original_name="e.png", source="email")


def test_metadata_whitelist_keeps_identifiers_out(store):
    metadata = {"PatientName": "DOE^JANE", "PatientID": "ID-12345", "patient_birth_date": "19700101",
                "modality": "CT", "pixel_spacing": (0.5, 0.75), "window_center": np.float32(40),
                "window_width": 400.0, "photometric_interpretation": "MONOCHROME2",
                "conversions": ["window applied (header: center 40, width 400)"]}
    case = store.add_case(image(6), prompt="the liver", original_name="scan.dcm", metadata=metadata)
    prediction_id = store.add_prediction(case.id, prediction(seed=6, prompt="the liver"))
    store.save_correction(case.id, np.ones((24, 32), bool), annotator="alice", prediction_id=prediction_id)
    assert case.metadata == {"modality": "CT", "pixel_spacing": [0.5, 0.75], "window_center": 40.0,
                             "window_width": 400.0, "photometric_interpretation": "MONOCHROME2",
                             "conversions": ["window applied (header: center 40, width 400)"]}
    assert store.corrections()[0]["metadata"] == case.metadata
    if store.path is not None:  # SQLite: the file and its WAL, byte for byte
        blobs = [store.path, Path(f"{store.path}-wal"), *stored_files(store)]
        assert Path(f"{store.path}-wal").is_file()
    else:  # PostgreSQL: every row of every table, as text
        blobs = [*stored_files(store)]
        rows = [sql_connection(store).execute(f'SELECT * FROM "{table}"').fetchall()
                for table in ("meta", "cases", "predictions", "corrections", "drafts", "reviews")]
        assert not [secret for secret in ("DOE^JANE", "ID-12345", "19700101", "PatientName") if secret in repr(rows)]
    for path in blobs:
        if path.is_file():
            data = path.read_bytes()
            for secret in (b"DOE^JANE", b"ID-12345", b"19700101", b"PatientName"):
                assert secret not in data, (secret, path)


# ------------------------------------------------------------------------- predictions


def test_prediction_round_trip(store):
    case = store.add_case(image(7), prompt="a round lesion", original_name="p.png",
                          metadata={"conversions": ["grey image replicated to 3 channels"]})
    assert store.latest_prediction_id(case.id) is None
    original = prediction(seed=7)
    first = store.add_prediction(case.id, original)
    second = store.add_prediction(case.id, prediction(seed=8))
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
    conn = sql_connection(store)
    row = conn.execute("SELECT score_foreground_entropy, score_image_entropy, foreground_pixels FROM predictions "
                       "WHERE id = ?", [first]).fetchone()
    conn.close()
    assert row == (pytest.approx(original.scores["mean_entropy_foreground"]),
                   pytest.approx(original.scores["mean_entropy"]), int(original.mask.sum()))
    with pytest.raises(StorageError, match="shape"):
        store.add_prediction(case.id, prediction(shape=(10, 10)))
    with pytest.raises(StorageError, match="does not exist"):
        store.load_prediction(12345)


def test_store_does_not_import_the_predictor(tmp_path):
    """Opening a store and saving cases and corrections needs no model code (and so no torch)."""
    import subprocess
    import sys

    script = ("import sys, numpy as np\n"
              "from medclipseg.annotation.store import AnnotationStore\n"
              f"store = AnnotationStore({str(tmp_path / 'a.db')!r})\n"
              "case = store.add_case(np.zeros((4, 4, 3), np.uint8), prompt='a lesion', original_name='x.png')\n"
              "store.save_correction(case.id, np.ones((4, 4), bool), annotator='alice')\n"
              "store.next_case('bob'); store.queue_summary(); store.close()\n"
              "assert 'medclipseg.inference.predictor' not in sys.modules and 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO)


# ------------------------------------------------------------------------- corrections


def test_correction_versions_and_pixel_counts(store):
    case = store.add_case(image(9, (20, 30)), prompt="a round lesion", original_name="c.png")
    predicted = prediction((20, 30), seed=9)
    # Predicted: left half (columns < 15). Corrected: top half (rows < 10).
    predicted.probability[:] = 0.1
    predicted.probability[:, :15] = 0.9
    predicted.mask = predicted.probability > 0.5
    prediction_id = store.add_prediction(case.id, predicted)
    corrected = np.zeros((20, 30), np.uint8)
    corrected[:10] = 255
    first = store.save_correction(case.id, corrected, annotator="  alice ")
    # added: top-right quadrant 10 x 15; erased: bottom-left quadrant 10 x 15.
    assert (first.version, first.annotator, first.status) == (1, "alice", "corrected")
    assert (first.pixels_added, first.pixels_erased, first.pixels_changed) == (150, 150, 300)
    assert store.get_case(case.id).status == "corrected"

    accepted = store.save_correction(case.id, predicted.mask.astype(np.float32), annotator="bob",
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
    assert [row["version"] for row in store.corrections(statuses="accepted")] == [2]
    assert store.corrections(statuses=()) == []
    first_row = everything[0]
    np.testing.assert_array_equal(store.load_mask(first_row["mask_path"]), corrected > 0)
    np.testing.assert_array_equal(store.load_mask(first_row["predicted_mask_path"]), predicted.mask)
    assert first_row["prediction_id"] == prediction_id and first_row["model_id"] == "test-model"
    with pytest.raises(StorageError):
        store.load_mask("../annotations.db")


def test_correction_at_another_threshold_matches_with_threshold(store):
    """The comparison mask and scores at a new threshold are Prediction.with_threshold's."""
    case, prediction_id = case_with_prediction(store, 21)
    saved = store.save_correction(case.id, np.zeros((24, 32), bool), annotator="alice", threshold=0.7)
    expected = store.load_prediction(prediction_id).with_threshold(0.7)
    row = store.corrections()[0]
    np.testing.assert_array_equal(store.load_mask(row["predicted_mask_path"]), expected.mask)
    assert saved.pixels_erased == int(expected.mask.sum())
    assert row["scores"] == pytest.approx(expected.scores)
    with pytest.raises(StorageError, match="between 0 and 1"):
        store.save_correction(case.id, np.zeros((24, 32), bool), annotator="alice", threshold=1.5)
    # A prediction stored without its boundary band (not made by the Predictor) keeps its own threshold.
    banded = prediction(seed=22)
    banded.scores = {key: value for key, value in banded.scores.items() if key != "boundary_band_px"}
    other = store.add_case(image(22), prompt="a round lesion", original_name="b.png")
    store.add_prediction(other.id, banded)
    with pytest.raises(StorageError, match="boundary band"):
        store.save_correction(other.id, np.zeros((24, 32), bool), annotator="alice", threshold=0.7)
    assert store.save_correction(other.id, np.zeros((24, 32), bool), annotator="alice", threshold=0.5).version == 1


def test_correction_without_prediction(store):
    case = store.add_case(image(10), prompt="a round lesion", original_name="n.png")
    mask = np.zeros((24, 32), bool)
    mask[2:5, 3:7] = True
    correction = store.save_correction(case.id, mask, annotator="alice")
    assert (correction.pixels_added, correction.pixels_erased) == (12, 0)
    row = store.corrections()[0]
    assert row["prediction_id"] is None and row["scores"] is None
    assert not store.load_mask(row["predicted_mask_path"]).any()
    with pytest.raises(StorageError, match="between 0 and 1"):
        store.save_correction(case.id, mask, annotator="alice", threshold=0.0)


def test_refused_corrections_leave_nothing(store):
    case, prediction_id = case_with_prediction(store, 11)
    before = stored_files(store)
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
    assert stored_files(store) == before
    other, other_prediction = case_with_prediction(store, 12)
    before = stored_files(store)
    with pytest.raises(StorageError, match="belongs to case"):
        store.save_correction(case.id, good, annotator="alice", prediction_id=other_prediction)
    with pytest.raises(StorageError, match="does not exist"):
        store.save_correction(case.id, good, annotator="alice", prediction_id=9999)
    assert stored_files(store) == before
    assert store.counts()["corrections"] == 0
    assert store.get_case(case.id).status == "unreviewed"


# ------------------------------------------------------------------------------- a case with its prediction


def test_a_case_and_its_prediction_are_added_together(store):
    """One transaction: nobody ever sees the case without its prediction, and a prediction the
    store refuses leaves no case behind."""
    pixels, predicted = image(20), prediction(seed=20)
    case, prediction_id = store.add_case_with_prediction(pixels, predicted, prompt="a round lesion",
                                                         original_name="p.png", source="ingest", batch="b")
    assert (case.original_name, case.source, case.batch, case.status) == ("p.png", "ingest", "b", "unreviewed")
    assert store.latest_prediction_id(case.id) == prediction_id
    np.testing.assert_array_equal(store.load_prediction(prediction_id).probability, predicted.probability)
    # The same pixels and prompt again: the same case, one more prediction.
    again, second = store.add_case_with_prediction(pixels, prediction(seed=21), prompt="a round lesion",
                                                   original_name="copy.png")
    assert again.id == case.id and second != prediction_id and store.counts()["unreviewed"] == 1
    before = (store.counts(), stored_files(store))
    with pytest.raises(StorageError, match="shape"):
        store.add_case_with_prediction(image(22), prediction(shape=(10, 10), seed=22), prompt="a round lesion",
                                       original_name="wrong.png")
    assert store.counts() == before[0]
    assert [p for p in stored_files(store) if "/images/" not in p.as_posix()] == \
           [p for p in before[1] if "/images/" not in p.as_posix()]


# ------------------------------------------------------------------------------- skip and un-skip


def test_skip_respects_leases_and_saved_versions(store):
    from medclipseg.annotation.store import SavedVersionExists

    free, _ = case_with_prediction(store, 30)
    held, _ = case_with_prediction(store, 31)
    saved, _ = case_with_prediction(store, 32)
    assert store.claim(held.id, annotator="bob")
    with pytest.raises(StorageError, match="bob") as refused:
        store.skip(held.id, annotator="alice")
    assert not isinstance(refused.value, SavedVersionExists)
    assert store.get_case(held.id).status == "unreviewed"
    store.skip(held.id, annotator="bob")
    store.skip(free.id, annotator="alice")
    assert store.get_case(held.id).status == store.get_case(free.id).status == "skipped"
    assert store.get_case(held.id).assigned_to is None

    mask = np.zeros((24, 32), bool)
    mask[3:9, 4:12] = True
    store.save_correction(saved.id, mask, annotator="carol")
    with pytest.raises(SavedVersionExists) as asked:
        store.skip(saved.id, annotator="alice")
    assert (asked.value.case_id, asked.value.version, asked.value.annotator, asked.value.status) == \
           (saved.id, 1, "carol", "corrected")
    assert store.get_case(saved.id).status == "corrected"
    store.skip(saved.id, annotator="alice", discard_saved=True)
    assert store.get_case(saved.id).status == "skipped"
    with pytest.raises(StorageError, match="annotator"):
        store.skip(free.id, annotator=" ")


def test_unskip_restores_the_latest_saved_status_or_the_queue(store):
    store.ensure_base_version("model-a@1", source="x", name="model-a")
    unreviewed = store.add_case(image(40), prompt="a round lesion", original_name="u.png")
    store.add_prediction(unreviewed.id, prediction_from_probability(
        np.where(np.arange(24 * 32).reshape(24, 32) % 7 == 0, 0.8, 0.1).astype(np.float32), model_id="model-a@1"))
    reviewed, _ = case_with_prediction(store, 41)
    mask = np.zeros((24, 32), bool)
    mask[2:6, 2:6] = True
    store.save_correction(reviewed.id, mask, annotator="carol")                  # v1 corrected
    store.save_correction(reviewed.id, None, annotator="dave", status="accepted")  # v2 accepted
    for case in (unreviewed, reviewed):
        store.skip(case.id, annotator="alice", discard_saved=True)
    who = sql_connection(store).execute("SELECT status_by FROM cases WHERE id = ?", (reviewed.id,)).fetchone()
    assert who == ("alice",)  # a skip leaves no version, so the case records who did it
    # While it was skipped another version became current: its old ranks must not come back with it.
    folder = store.models_dir / "model-b"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    store.add_trained_version(folder, model_id="model-b@2", name="model-b", parent_id="model-a@1",
                              created_by="alice", recipe={}, correction_ids=[], train_cases=1)
    store.promote("model-b@2", by="alice")

    assert store.unskip(reviewed.id, annotator="erin") == "accepted"
    assert store.unskip(unreviewed.id, annotator="erin") == "unreviewed"
    assert store.get_case(reviewed.id).status == "accepted"
    assert store.get_case(unreviewed.id).status == "unreviewed"
    connection = sql_connection(store)
    assert connection.execute("SELECT status_by FROM cases WHERE id = ?", (reviewed.id,)).fetchone() == ("erin",)
    ranked = connection.execute(f"SELECT ranked_model_id, {ACQUISITION_SCORES['band_entropy']} FROM cases "
                                "WHERE id = ?", (unreviewed.id,)).fetchone()
    connection.close()
    assert ranked == (None, None)
    assert store.cases_to_rescore("model-b@2") == [unreviewed.id]
    with pytest.raises(StorageError, match="not skipped"):
        store.unskip(reviewed.id, annotator="erin")
