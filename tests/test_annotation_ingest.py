"""`medclipseg.annotation.ingest`: sources (folder, zip), prompt CSVs, ingest with a real small model, the review queue order."""
from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from annotation_support import database_with_schema_version
from app_support import write_dicom
from medclipseg.annotation.schema import SCHEMA_VERSION
from medclipseg.annotation import ingest as queue_module
from medclipseg.cli import main
from medclipseg.io.images import ImageReadError
from medclipseg.io.prompts import PromptError
from medclipseg.annotation.ingest import (
    IngestReport,
    ingest,
    iter_sources,
    read_prompt_csv,
    scan_source,
)
from medclipseg.annotation.queue import ACQUISITION_LABELS, ACQUISITION_SCORES, ACQUISITIONS
from medclipseg.io.prompts import states_absence
from medclipseg.annotation.store import AnnotationStore

SECRETS = (b"DOE^JANE", b"ID-12345")


def _png(seed: int, shape=(40, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 80, size=(*shape, 3), dtype=np.uint8)
    cv2.circle(image, (10 + 3 * seed, 12 + 2 * seed), 6 + seed, (220, 220, 220), thickness=-1)
    return cv2.imencode(".png", image)[1].tobytes()


def _write_dicom(path: Path) -> Path:
    """A 16-bit CT slice whose header names a patient."""
    return write_dicom(path, patient_name="DOE^JANE", patient_id="ID-12345", size=32, pixel_spacing=(0.5, 0.75))


def _make_source(root: Path) -> Path:
    """3 PNGs (one in a subfolder), a truncated PNG, a DICOM with patient identifiers, and files to ignore."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.png").write_bytes(_png(1))
    (root / "b.png").write_bytes(_png(2))
    (root / "sub").mkdir()
    (root / "sub" / "c.PNG").write_bytes(_png(3))
    data = _png(4)
    (root / "broken.png").write_bytes(data[: len(data) // 2])
    _write_dicom(root / "sub" / "scan.dcm")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(_png(5))
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._a.png").write_bytes(b"resource fork")
    (root / ".cache").mkdir()
    (root / ".cache" / "d.png").write_bytes(_png(6))
    return root


SOURCE_NAMES = ["a.png", "b.png", "broken.png", "sub/c.PNG", "sub/scan.dcm"]


def _zip_of(folder: Path, target: Path, extra=()) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("images/", b"")  # a directory entry
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
        for name, data in extra:
            archive.writestr(name, data)
    return target


def _blobs(store) -> list:
    paths = [store.path, Path(f"{store.path}-wal"), Path(f"{store.path}-shm")]
    paths += [p for p in store.files_dir.rglob("*") if p.is_file()]
    return [p for p in paths if p.is_file()]


# ------------------------------------------------------------------------------ sources


def test_iter_sources_folder(tmp_path):
    source = _make_source(tmp_path / "src")
    items = list(iter_sources(source))
    assert [name for name, _ in items] == SOURCE_NAMES
    assert dict(items)["a.png"] == (source / "a.png").read_bytes()


def test_iter_sources_zip_uses_names_only_as_labels(tmp_path):
    source = _make_source(tmp_path / "src")
    extra = [("../escape.png", _png(7)), ("/abs/x.jpg", _png(8)), ("dir/.DS_Store", b"x"),
             ("__MACOSX/sub/._c.png", b"x"), ("readme.md", b"x")]
    archive = _zip_of(source, tmp_path / "upload.zip", extra)
    before = sorted(tmp_path.rglob("*"))
    items = dict(iter_sources(archive))
    assert sorted(items) == sorted(SOURCE_NAMES + ["escape.png", "abs/x.jpg"])
    assert items["sub/c.PNG"] == (source / "sub" / "c.PNG").read_bytes()
    assert sorted(tmp_path.rglob("*")) == before  # nothing extracted anywhere
    assert not (tmp_path.parent / "escape.png").exists()


def test_iter_sources_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        list(iter_sources(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        list(iter_sources(tmp_path / "empty"))
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    (tmp_path / "texts" / ".b.png").write_bytes(_png(1))
    with pytest.raises(ValueError, match="holds no images"):
        list(iter_sources(tmp_path / "texts"))
    (tmp_path / "fake.zip").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="neither a folder nor a .zip"):
        list(iter_sources(tmp_path / "fake.zip"))
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as archive:
        archive.writestr("notes.txt", "x")
    with pytest.raises(ValueError, match="holds no images"):
        list(iter_sources(tmp_path / "empty.zip"))

    source = _make_source(tmp_path / "src")
    archive = _zip_of(source, tmp_path / "src.zip")
    monkeypatch.setattr(queue_module, "MAX_ARCHIVE_MEMBERS", 3)
    with pytest.raises(ValueError, match="limited to 3"):
        scan_source(archive)
    assert len(scan_source(source)) == 5  # folders are not limited
    monkeypatch.setattr(queue_module, "MAX_ARCHIVE_MEMBERS", 10000)
    monkeypatch.setattr(queue_module, "MAX_MEMBER_BYTES", 100)
    for where in (source, archive):
        with pytest.raises(ImageReadError, match="too large"):
            list(iter_sources(where))


# ---------------------------------------------------------------------------- prompt CSV


def test_read_prompt_csv_variants(tmp_path):
    ours = tmp_path / "ours.csv"
    ours.write_text("image,prompt,notes\nsub/c.PNG,the bright disc,x\na.png, a round lesion ,\n\n")
    assert read_prompt_csv(ours) == {"sub/c.PNG": "the bright disc", "c.PNG": "the bright disc",
                                     "a.png": "a round lesion"}
    authors = tmp_path / "authors.csv"
    authors.write_text("\ufeff Image , Description ,Ground Truth\nx.png,a polyp,x.png\n", encoding="utf-8")
    assert read_prompt_csv(authors) == {"x.png": "a polyp"}
    shouting = tmp_path / "shouting.csv"
    shouting.write_text("PROMPT,IMAGE\n\"a lesion, left side\",./dir\\y.png\n")
    assert read_prompt_csv(shouting) == {"dir/y.png": "a lesion, left side", "y.png": "a lesion, left side"}
    ambiguous = tmp_path / "ambiguous.csv"
    ambiguous.write_text("image,prompt\none/z.png,first\ntwo/z.png,second\nthree/w.png,same\nfour/w.png,same\n")
    assert read_prompt_csv(ambiguous) == {"one/z.png": "first", "two/z.png": "second", "three/w.png": "same",
                                          "four/w.png": "same", "w.png": "same"}


def test_read_prompt_csv_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_prompt_csv(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,text\na.png,x\n")
    with pytest.raises(ValueError, match="needs columns 'image' and 'prompt'.*'file', 'text'"):
        read_prompt_csv(bad)
    bad.write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_prompt_csv(bad)
    bad.write_text("image,prompt\na.png,fine\nb.png,   \n,orphan prompt\nd.png,ok\n")
    with pytest.raises(ValueError, match=r"row\(s\) 3, 4"):
        read_prompt_csv(bad)
    bad.write_text("image,prompt\na.png,one\na.png,two\n")
    with pytest.raises(ValueError, match=r"a.png \(rows 2 and 3\)"):
        read_prompt_csv(bad)
    bad.write_text("image,prompt\n")
    with pytest.raises(ValueError, match="no prompt rows"):
        read_prompt_csv(bad)


def test_report_summary():
    report = IngestReport(added=[1] * 12, duplicates=[2], failed=[(f"f{i}.png", "truncated") for i in range(7)],
                          seconds=3.21)
    assert report.summary() == ("12 images added, 1 already in the queue, 7 failed: f0.png (truncated), "
                                "f1.png (truncated), f2.png (truncated), f3.png (truncated), f4.png (truncated), "
                                "and 2 more (3.2 s)")
    assert IngestReport(added=[1]).summary() == "1 image added, 0 already in the queue, 0 failed (0.0 s)"
    assert set(ACQUISITION_LABELS) == set(ACQUISITION_SCORES)


# -------------------------------------------------------------------------------- ingest


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, small_tiny_predictor):
    root = tmp_path_factory.mktemp("ingest")
    source = _make_source(root / "src")
    store = AnnotationStore(root / "db" / "annotations.db")
    calls = []
    report = ingest(store, small_tiny_predictor, source, prompt="a bright round lesion", batch="week1",
                    batch_size=2, num_samples=2, progress=lambda *args: calls.append(args))
    yield {"store": store, "report": report, "calls": calls, "source": source}
    store.close()


def test_ingest_report_and_cases(ingested):
    store, report, calls = ingested["store"], ingested["report"], ingested["calls"]
    assert len(report.added) == 4 and report.duplicates == []
    assert [name for name, _ in report.failed] == ["broken.png"]
    assert "broken.png" in report.failed[0][1] and "truncated" in report.failed[0][1]
    assert report.summary().startswith("4 images added, 0 already in the queue, 1 failed: broken.png (")
    assert [call[:2] for call in calls] == [(i, 5) for i in range(1, 6)]
    assert any("broken.png" in call[2] and "failed" in call[2] for call in calls)
    counts = store.counts()
    assert counts["unreviewed"] == 4 and counts["predictions"] == 4
    names = set()
    for case_id in report.added:
        case = store.get_case(case_id)
        names.add(case.original_name)
        assert (case.source, case.batch, case.prompt) == ("ingest", "week1", "a bright round lesion")
        prediction = store.load_prediction(store.latest_prediction_id(case_id))
        assert prediction.probability.shape == (case.height, case.width)
        assert prediction.num_samples == 2 and prediction.prompt == case.prompt
    assert names == {"a.png", "b.png", "sub/c.PNG", "sub/scan.dcm"}
    dicom = next(store.get_case(i) for i in report.added if store.get_case(i).original_name == "sub/scan.dcm")
    assert dicom.metadata["modality"] == "CT" and dicom.metadata["pixel_spacing"] == [0.5, 0.75]
    assert any("window applied" in step for step in dicom.metadata["conversions"])
    assert (dicom.width, dicom.height) == (32, 32)


def test_ingest_keeps_patient_identifiers_out(ingested):
    for path in _blobs(ingested["store"]):
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret not in data, (secret, path)


def test_ingest_twice_counts_duplicates(ingested, small_tiny_predictor):
    store = ingested["store"]
    report = ingest(store, small_tiny_predictor, ingested["source"], prompt="a bright round lesion",
                    num_samples=2)
    assert report.added == [] and sorted(report.duplicates) == sorted(ingested["report"].added)
    assert len(report.failed) == 1
    assert report.summary().startswith("0 images added, 4 already in the queue, 1 failed")
    assert store.counts()["predictions"] == 4


@pytest.mark.parametrize("acquisition", list(ACQUISITION_SCORES))
def test_queue_serves_ingested_cases_by_score(ingested, acquisition):
    """The queue's order equals the order of the predictions' own scores (or the random keys)."""
    store = ingested["store"]
    score_key = ACQUISITIONS[acquisition].score_key
    conn = sqlite3.connect(store.path)
    rows = conn.execute("SELECT c.id, c.prompt, c.random_key, p.scores FROM cases c JOIN predictions p "
                        "ON p.case_id = c.id WHERE c.batch = 'week1'").fetchall()
    conn.close()
    if score_key is not None:
        keyed = [(case_id, json.loads(scores)[score_key]) for case_id, _prompt, _key, scores in rows]
    elif acquisition == "random":
        keyed = [(case_id, key) for case_id, _prompt, key, _scores in rows]
    else:  # foreground-aware random: prompts stating absence after the others
        keyed = [(case_id, key + (0 if states_absence(prompt) else 1)) for case_id, prompt, key, _scores in rows]
    expected = [case_id for case_id, _ in sorted(keyed, key=lambda row: (-row[1], row[0]))]
    served = []
    try:
        for index in range(len(expected)):
            case = store.next_case(f"{acquisition}-{index}", acquisition=acquisition, batch="week1")
            served.append(case.id)
        if ACQUISITIONS[acquisition].diverse:
            # With nothing taken yet the top rank comes first; after it, likeness to the cases taken
            # by others may reorder the rest (annotation.diversity), but each is served once.
            assert served[0] == expected[0] and sorted(served) == sorted(expected)
        else:
            assert served == expected
        assert store.next_case("one-too-many", acquisition=acquisition) is None
    finally:  # the module's store is shared: give every lease back, also after a failure
        for index, case_id in enumerate(served):
            store.release(case_id, annotator=f"{acquisition}-{index}")


def test_ingest_zip_with_prompt_csv(tmp_path, small_tiny_predictor, monkeypatch):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "one.png").write_bytes(_png(1))
    (folder / "two.png").write_bytes(_png(2))
    (folder / "big.png").write_bytes(_png(3, shape=(120, 120)))
    (folder / "copy.png").write_bytes(_png(1))  # same pixels and prompt as one.png
    archive = _zip_of(folder, tmp_path / "batch.zip")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("Image,Description\none.png,the disc\ncopy.png,the disc\nbig.png,the disc\n")
    monkeypatch.setattr(queue_module, "MAX_MEMBER_BYTES", max(len(_png(1)), len(_png(2))) + 10)
    assert (folder / "big.png").stat().st_size > queue_module.MAX_MEMBER_BYTES
    with AnnotationStore(tmp_path / "annotations.db") as store:
        report = ingest(store, small_tiny_predictor, archive, prompts_csv=prompts, num_samples=2, batch_size=8)
        failed = dict(report.failed)
        assert set(failed) == {"two.png", "big.png"}
        assert "no prompt for two.png" in failed["two.png"] and "too large" in failed["big.png"]
        assert len(report.added) == 1 and report.duplicates == report.added
        assert store.counts()["predictions"] == 1


def test_ingest_argument_errors(tmp_path, small_tiny_predictor):
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.png").write_bytes(_png(1))
    with AnnotationStore(tmp_path / "annotations.db") as store:
        with pytest.raises(ValueError, match="exactly one"):
            ingest(store, small_tiny_predictor, source)
        with pytest.raises(ValueError, match="exactly one"):
            ingest(store, small_tiny_predictor, source, prompt="x", prompts_csv=tmp_path / "p.csv")
        with pytest.raises(PromptError, match="empty"):
            ingest(store, small_tiny_predictor, source, prompt="  ")
        with pytest.raises(ValueError, match="threshold"):
            ingest(store, small_tiny_predictor, source, prompt="x", threshold=1.5)
        with pytest.raises(ValueError, match="does not exist"):
            ingest(store, small_tiny_predictor, tmp_path / "nowhere", prompt="x")
        assert store.counts()["unreviewed"] == 0


# ----------------------------------------------------------------------------------- CLI


def test_cli_ingest(tmp_path, small_tiny_predictor, monkeypatch, capsys):
    from medclipseg.inference import predictor as predictor_module

    loaded = []
    monkeypatch.setattr(predictor_module.Predictor, "from_pretrained",
                        classmethod(lambda cls, *args, **kwargs: loaded.append(kwargs) or small_tiny_predictor))
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.png").write_bytes(_png(1))
    (source / "bad.png").write_bytes(b"not an image at all")
    db = tmp_path / "cli.db"
    code = main(["ingest", "--db", str(db), "--source", str(source), "--prompt", "a bright disc",
                 "--num-samples", "2", "--batch", "cli", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "[1/2]" in out and "[2/2]" in out
    assert out.strip().splitlines()[-1].startswith("1 image added, 0 already in the queue, 1 failed: bad.png")
    assert loaded and loaded[0]["device"] == "cpu"
    with AnnotationStore(db) as store:
        assert store.counts()["predictions"] == 1

    assert main(["ingest", "--db", str(db), "--source", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medclipseg ingest: error: ") and "does not exist" in err and len(err.splitlines()) == 1
    (tmp_path / "p.csv").write_text("name,text\n")
    assert main(["ingest", "--source", str(source), "--prompts-csv", str(tmp_path / "p.csv")]) == 2
    assert "needs columns" in capsys.readouterr().err
    newer = database_with_schema_version(tmp_path / "newer.db", str(SCHEMA_VERSION + 1))
    assert main(["ingest", "--db", str(newer), "--source", str(source), "--prompt", "x"]) == 2
    assert "newer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["ingest", "--source", str(source), "--prompt", "x", "--prompts-csv", "p.csv"])
    assert info.value.code == 2
    assert len(loaded) == 1  # usage errors fail before the model is loaded


class _RenamedPredictor:
    """The same model under another id, as a retrained version would be."""

    def __init__(self, predictor, model_id):
        self._predictor, self.model_id = predictor, model_id

    def predict(self, *args, **kwargs):
        prediction = self._predictor.predict(*args, **kwargs)
        prediction.model_id = self.model_id
        return prediction


def test_ingest_with_another_model_rescores_unreviewed_cases_only(tmp_path, small_tiny_predictor):
    source = _make_source(tmp_path / "src")
    store = AnnotationStore(tmp_path / "db" / "annotations.db")
    first = ingest(store, small_tiny_predictor, source, prompt="a bright round lesion", num_samples=2)
    reviewed = first.added[0]
    store.save_correction(reviewed, np.zeros((store.get_case(reviewed).height, store.get_case(reviewed).width),
                                             bool), annotator="alice")
    other = _RenamedPredictor(small_tiny_predictor, "other@1")
    again = ingest(store, other, source, prompt="a bright round lesion", num_samples=2)
    assert sorted(again.rescored) == sorted(first.added[1:]) and again.duplicates == [reviewed]
    assert again.added == [] and again.summary().startswith("0 images added, 3 re-scored by this model, "
                                                            "1 already in the queue")
    for case_id in again.rescored:
        assert store.load_prediction(store.latest_prediction_id(case_id)).model_id == "other@1"
    third = ingest(store, other, source, prompt="a bright round lesion", num_samples=2)
    assert third.rescored == [] and sorted(third.duplicates) == sorted(first.added)
    store.close()


class _CheckingPredictor:
    """Predicts a fixed disc; while predicting, reads the database through its own connection (a
    concurrent reader) and records any case that has no prediction. Raises for ``fail_on`` names'
    images, told apart by their first pixel."""

    model_id = "stub@1"

    def __init__(self, db_path, fail_on_pixels=()):
        self.db_path, self.fail_on_pixels = db_path, [tuple(p) for p in fail_on_pixels]
        self.orphans, self.calls = [], 0

    def predict(self, image, prompt, *, num_samples=2, threshold=0.5, seed=None, channel_order="rgb", **_):
        from app_support import prediction_from_probability

        self.calls += 1
        connection = sqlite3.connect(self.db_path)
        try:
            self.orphans += connection.execute(
                "SELECT id FROM cases c WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE p.case_id = c.id)"
            ).fetchall()
        finally:
            connection.close()
        pixels = np.asarray(image)
        if tuple(pixels[0, 0].tolist()) in self.fail_on_pixels:
            raise RuntimeError("CUDA out of memory (simulated)")
        yy, xx = np.mgrid[:pixels.shape[0], :pixels.shape[1]]
        probability = np.where(np.hypot(yy - 12, xx - 12) < 6, 0.8, 0.1).astype(np.float32)
        return prediction_from_probability(probability, model_id=self.model_id, prompt=prompt, threshold=threshold)


def test_a_prediction_error_fails_that_file_only_and_no_case_is_seen_without_a_prediction(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for seed, name in ((1, "a.png"), (2, "b.png"), (3, "c.png"), (4, "d.png")):
        (source / name).write_bytes(_png(seed))
    failing = cv2.imdecode(np.frombuffer(_png(2), np.uint8), cv2.IMREAD_COLOR)[0, 0]   # b.png, as BGR
    store = AnnotationStore(tmp_path / "db" / "annotations.db")
    predictor = _CheckingPredictor(store.path, fail_on_pixels=[failing])
    report = ingest(store, predictor, source, prompt="a bright round lesion", batch_size=4, num_samples=2)
    assert predictor.calls == 4 and predictor.orphans == []
    assert [name for name, _ in report.failed] == ["b.png"]
    assert "CUDA out of memory" in report.failed[0][1]
    assert len(report.added) == 3
    assert sorted(store.get_case(case_id).original_name for case_id in report.added) == ["a.png", "c.png", "d.png"]
    counts = store.counts()
    assert counts["unreviewed"] == 3 and counts["predictions"] == 3       # no case for b.png
    for case_id in report.added:
        assert store.latest_prediction_id(case_id) is not None
    # Ingesting again with a model that now works adds b.png; the other three are duplicates.
    again = ingest(store, _CheckingPredictor(store.path), source, prompt="a bright round lesion", num_samples=2)
    assert [store.get_case(case_id).original_name for case_id in again.added] == ["b.png"]
    assert sorted(again.duplicates) == sorted(report.added) and again.failed == []
    store.close()
