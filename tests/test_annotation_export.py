"""`medclipseg.annotation.export`: corrected annotations -> a dataset in the authors' layout (real SQLite store, real files),
and one epoch of training on the export."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import medclipseg
from medclipseg.annotation import export as export_module
from medclipseg.cli import main
from medclipseg.datasets.layout import SPLITS, load_split, read_prompt_table
from medclipseg.annotation.export import ExportResult, export_dataset, split_cases
from medclipseg.datasets.splits import split_sizes
from medclipseg.inference.predictor import Prediction
from medclipseg.annotation.store import AnnotationStore
from app_support import prediction_from_probability

DEMO_WEIGHTS = Path(medclipseg.__file__).resolve().parent.parent / "assets" / "demo-tiny"
SHAPES = ((64, 80), (72, 66))  # (height, width): non-square to catch transposed masks
NUM_CORRECTED = 12
PROMPTS = ("a bright round lesion in the {} scan", "the disc-shaped tumour, case {}")


# --------------------------------------------------------------------------------------
# a store with corrected, accepted, re-corrected, skipped and unreviewed cases


def _image_and_disc(index: int, shape: tuple):
    rng = np.random.default_rng(index)
    height, width = shape
    disc = np.zeros(shape, np.uint8)
    centre = (int(rng.integers(20, width - 20)), int(rng.integers(20, height - 20)))
    cv2.circle(disc, centre, int(rng.integers(8, 16)), 255, thickness=-1)
    image = rng.integers(0, 90, size=(height, width, 3), dtype=np.uint8)
    image[disc > 0] += 140
    return image, disc > 0


def _prediction(index: int, shape: tuple, prompt: str) -> Prediction:
    """A hand-made prediction; probabilities stay clear of 0.5 so float16 storage cannot flip the mask."""
    rng = np.random.default_rng(1000 + index)
    probability = rng.choice(np.array([0.05, 0.2, 0.35, 0.65, 0.8, 0.95], np.float32), size=shape)
    return prediction_from_probability(probability, mutual_fraction=rng.uniform(0.1, 0.5, size=shape),
                                       band_width=3, prompt=prompt, model_id="test-model", seconds=0.01)


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """12 exportable cases (3 with two versions, 1 accepted, 2 by bob, 2 sharing one image),
    plus a skipped and an unreviewed case. `expected[case_id]` holds what the export must contain."""
    store = AnnotationStore(tmp_path_factory.mktemp("db") / "annotations.db")
    store.set_gold_fraction(0.0)  # no gold split here, so the ratios alone decide (gold: its own test)
    expected = {}
    shared_image = None
    for index in range(NUM_CORRECTED + 2):
        shape = SHAPES[index % 2]
        image, disc = _image_and_disc(index, shape)
        if index == NUM_CORRECTED - 1:  # same pixels as the previous case, another prompt
            image, disc, shape = shared_image[0], shared_image[1], shared_image[0].shape[:2]
        if index == NUM_CORRECTED - 2:
            shared_image = (image, disc)
        prompt = PROMPTS[index % 2].format(index)
        case = store.add_case(image, prompt=prompt, original_name=f"scan_{index:02d}.png",
                              metadata={"modality": "ultrasound", "pixel_spacing": [0.1, 0.12], "window_center": 40,
                                        "PatientName": "Doe^Jane"})
        prediction = _prediction(index, shape, prompt)
        store.add_prediction(case.id, prediction)
        if index == NUM_CORRECTED:
            store.set_status(case.id, "skipped", annotator="alice")
            continue
        if index == NUM_CORRECTED + 1:
            continue  # left unreviewed
        annotator = "bob" if index in (4, 5) else "alice"
        if index == 3:
            store.save_correction(case.id, prediction.mask, annotator=annotator, status="accepted")
            final, status, version = prediction.mask, "accepted", 1
        elif index < 3:
            first = prediction.mask.copy()
            first[:5] = True
            store.save_correction(case.id, first, annotator=annotator)
            store.save_correction(case.id, disc, annotator=annotator)
            final, status, version = disc, "corrected", 2
        else:
            store.save_correction(case.id, disc.astype(np.uint8) * 255, annotator=annotator)
            final, status, version = disc, "corrected", 1
        expected[case.id] = dict(image=image, label=final, predicted=prediction.mask, prompt=prompt, status=status,
                                 version=version, annotator=annotator, shape=shape, index=index)
    yield {"store": store, "expected": expected, "db": store.path}
    store.close()


@pytest.fixture()
def exported(populated, tmp_path) -> ExportResult:
    return export_dataset(populated["store"], tmp_path / "export", val_fraction=0.2, test_fraction=0.2, seed=1)


def _grey(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert array is not None, path
    return array


def _leftovers(parent: Path) -> list:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------------------
# split_cases


def test_split_cases_is_deterministic_and_partitions():
    ids = list(range(3, 103))
    first = split_cases(ids, seed=5)
    assert first == split_cases(list(reversed(ids)), seed=5)  # order of the input does not matter
    assert split_cases(ids, seed=6) != first
    assert sorted(first["train"] + first["val"] + first["test"]) == ids
    assert {k: len(v) for k, v in first.items()} == {"train": 70, "val": 10, "test": 20}
    assert all(v == sorted(v) for v in first.values())


@pytest.mark.parametrize("n, val, test, sizes", [
    (0, 0.1, 0.2, (0, 0, 0)),
    (1, 0.1, 0.2, (1, 0, 0)),
    (2, 0.1, 0.2, (1, 0, 1)),  # largest remainders: 1.4 / 0.2 / 0.4, the last item to test
    (2, 0.05, 0.05, (2, 0, 0)),
    (3, 0.1, 0.2, (1, 1, 1)),
    (3, 0.0, 0.2, (2, 0, 1)),
    (3, 0.0, 0.0, (3, 0, 0)),
    (10, 0.1, 0.2, (7, 1, 2)),
    (2, 0.4, 0.4, (1, 0, 1)),
    (4, 0.45, 0.45, (1, 1, 2)),
])
def test_split_cases_sizes(n, val, test, sizes):
    result = split_cases(range(100, 100 + n), val_fraction=val, test_fraction=test, seed=0)
    assert (len(result["train"]), len(result["val"]), len(result["test"])) == sizes


def test_split_cases_minimums_hold_for_many_sizes():
    for n in range(1, 40):
        for val, test in ((0.1, 0.2), (0.01, 0.01), (0.49, 0.5), (0.0, 0.3), (0.7, 0.0)):
            result = split_cases(range(n), val_fraction=val, test_fraction=test, seed=n)
            assert len(result["train"]) >= 1
            assert sum(len(v) for v in result.values()) == n
            if n >= 3:
                assert (len(result["val"]) >= 1) == (val > 0)
                assert (len(result["test"]) >= 1) == (test > 0)


@pytest.mark.parametrize("val, test", [(-0.1, 0.2), (1.0, 0.0), (0.1, 1.0), (0.5, 0.5), (0.6, 0.7),
                                       (float("nan"), 0.1), (True, 0.1), ("0.1", 0.2)])
def test_split_cases_rejects_bad_fractions(val, test):
    with pytest.raises(ValueError, match="fraction"):
        split_cases(range(10), val_fraction=val, test_fraction=test)


def test_split_cases_rejects_duplicate_ids():
    with pytest.raises(ValueError, match="distinct"):
        split_cases([1, 2, 2])


# --------------------------------------------------------------------------------------
# the exported dataset


def test_export_layout_loads_and_matches_the_store(populated, exported):
    store, expected = populated["store"], populated["expected"]
    root = exported.root
    assert root.is_dir() and exported.zip_path is None
    assert exported.manifest_path == root / "manifest.json"
    assert sum(exported.counts.values()) == len(expected) == NUM_CORRECTED
    assert all(exported.counts[split] >= 1 for split in SPLITS)

    seen = {}
    for split in SPLITS:
        samples = load_split(root, split)
        assert len(samples) == exported.counts[split]
        for sample in samples:
            case_id = int(sample.image_name[len("case"):-len(".png")])
            assert sample.image_name == f"case{case_id:06d}.png" and sample.mask_path.name == sample.image_name
            assert case_id not in seen
            seen[case_id] = split
            want = expected[case_id]
            assert sample.prompt == want["prompt"]
            image = _grey(sample.image_path)
            assert image.dtype == np.uint8 and np.array_equal(image, want["image"])
            np.testing.assert_array_equal(image, store.load_image(case_id))
            label = _grey(sample.mask_path)
            assert label.dtype == np.uint8 and label.shape == want["shape"]
            assert set(np.unique(label)) <= {0, 255}
            np.testing.assert_array_equal(label > 0, want["label"])
    assert set(seen) == set(expected)
    # the skipped and the unreviewed case stay out
    assert len(list(root.rglob("*.png"))) == 3 * NUM_CORRECTED
    # the two cases with the same pixels are in the same split
    shared = [case_id for case_id, want in expected.items() if want["index"] >= NUM_CORRECTED - 2]
    assert len(shared) == 2 and seen[shared[0]] == seen[shared[1]]
    # both table formats, same rows
    for stem in ("Train_text", "Val_text", "Test_text"):
        xlsx = read_prompt_table(root / "Prompts_Folder" / f"{stem}.xlsx")
        csv_rows = read_prompt_table(root / "Prompts_Folder" / f"{stem}.csv")
        assert [{k: r[k] for k in ("Image", "Description", "Ground Truth")} for r in xlsx] == \
               [{k: r[k] for k in ("Image", "Description", "Ground Truth")} for r in csv_rows]


def test_manifest_and_predicted_masks(populated, exported):
    store, expected = populated["store"], populated["expected"]
    root = exported.root
    manifest = json.loads(exported.manifest_path.read_text(encoding="utf-8"))
    assert manifest["format"] == "medclipseg-export" and manifest["version"] == 1
    assert manifest["medclipseg_version"] == medclipseg.__version__
    assert manifest["created_at"].endswith("+00:00")
    assert manifest["params"]["val_fraction"] == 0.2 and manifest["params"]["test_fraction"] == 0.2
    assert manifest["params"]["seed"] == 1 and manifest["params"]["annotator"] is None
    assert sorted(manifest["params"]["statuses"]) == ["accepted", "corrected"]
    assert manifest["counts"] == exported.counts
    rows = {row["case_id"]: row for row in store.corrections(latest_only=True)}
    assert sorted(entry["case_id"] for entry in manifest["cases"]) == sorted(expected)
    for entry in manifest["cases"]:
        case_id, want, row = entry["case_id"], expected[entry["case_id"]], rows[entry["case_id"]]
        name = f"case{case_id:06d}.png"
        folder = {"train": "Train_Folder", "val": "Val_Folder", "test": "Test_Folder"}[entry["split"]]
        assert entry["image"] == f"{folder}/img/{name}" and entry["label"] == f"{folder}/label/{name}"
        assert (root / entry["image"]).is_file() and (root / entry["label"]).is_file()
        assert entry["predicted_label"] == f"predicted/{name}"
        assert (entry["prompt"], entry["status"], entry["version"], entry["annotator"]) == \
               (want["prompt"], want["status"], want["version"], want["annotator"])
        assert (entry["height"], entry["width"]) == want["shape"]
        assert entry["model_id"] == "test-model"
        assert entry["scores"]["foreground_pixels"] == int(want["predicted"].sum())
        assert entry["original_name"] == f"scan_{want['index']:02d}.png"
        assert entry["content_hash"] == row["content_hash"] and entry["corrected_at"] == row["created_at"]
        assert entry["pixels_changed"] == int((want["label"] != want["predicted"]).sum())
        assert entry["pixels_added"] == int((want["label"] & ~want["predicted"]).sum())
        assert entry["pixels_erased"] == int((~want["label"] & want["predicted"]).sum())
        assert entry["metadata"] == {"modality": "ultrasound", "pixel_spacing": [0.1, 0.12]}
        predicted = _grey(root / entry["predicted_label"])
        assert set(np.unique(predicted)) <= {0, 255}
        np.testing.assert_array_equal(predicted > 0, store.load_mask(row["predicted_mask_path"]))
        np.testing.assert_array_equal(predicted > 0, want["predicted"])
    text = exported.manifest_path.read_text(encoding="utf-8")
    assert "Doe" not in text and "window_center" not in text


def test_split_is_reproducible(populated, tmp_path):
    store = populated["store"]
    first = export_dataset(store, tmp_path / "a", val_fraction=0.2, test_fraction=0.2, seed=1)
    second = export_dataset(store, tmp_path / "b", val_fraction=0.2, test_fraction=0.2, seed=1)
    splits = [{e["case_id"]: e["split"] for e in json.loads(r.manifest_path.read_text())["cases"]}
              for r in (first, second)]
    assert splits[0] == splits[1]


def test_filters_by_status_and_annotator(populated, tmp_path):
    store, expected = populated["store"], populated["expected"]
    accepted = export_dataset(store, tmp_path / "accepted", statuses=("accepted",))
    assert sum(accepted.counts.values()) == 1
    entry, = json.loads(accepted.manifest_path.read_text())["cases"]
    assert entry["status"] == "accepted" and expected[entry["case_id"]]["index"] == 3
    bob = export_dataset(store, tmp_path / "bob", annotator="bob")
    cases = json.loads(bob.manifest_path.read_text())["cases"]
    assert sorted(expected[e["case_id"]]["index"] for e in cases) == [4, 5]
    assert bob.counts == {"train": 1, "val": 0, "test": 1}  # n=2: too few for a val case
    with pytest.raises(ValueError, match="status"):
        export_dataset(store, tmp_path / "bad", statuses=("skipped",))


def test_nothing_to_export(tmp_path):
    store = AnnotationStore(tmp_path / "empty" / "annotations.db")
    try:
        with pytest.raises(ValueError, match="There are no corrected or accepted cases to export yet"):
            export_dataset(store, tmp_path / "out")
    finally:
        store.close()
    assert not (tmp_path / "out").exists()


def test_a_corrected_case_skipped_later_is_left_out(tmp_path):
    store = AnnotationStore(tmp_path / "db" / "annotations.db")
    try:
        ids = []
        for index in range(2):
            image, disc = _image_and_disc(index, SHAPES[0])
            case = store.add_case(image, prompt=f"lesion {index}", original_name=f"{index}.png")
            store.save_correction(case.id, disc, annotator="alice")  # no prediction: compared with an empty mask
            ids.append(case.id)
        store.set_status(ids[0], "skipped", annotator="alice")
        result = export_dataset(store, tmp_path / "out")
        entry, = json.loads(result.manifest_path.read_text())["cases"]
        assert entry["case_id"] == ids[1] and entry["model_id"] is None
        assert entry["pixels_added"] == entry["pixels_changed"] > 0
        assert not _grey(result.root / entry["predicted_label"]).any()
        store.set_status(ids[1], "skipped", annotator="alice")
        with pytest.raises(ValueError, match="no corrected or accepted cases"):
            export_dataset(store, tmp_path / "out2")
    finally:
        store.close()


def test_gold_cases_go_to_the_test_split_only(tmp_path):
    """Gold cases score model versions; an export must never put them where `train` learns from them."""
    import hashlib

    from medclipseg.annotation.gold import is_gold

    images = [_image_and_disc(index, SHAPES[0]) for index in range(16)]
    hashes = []
    for pixels, _ in images:  # the store's content hash of an image, computed here
        digest = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}x3:".encode("ascii"))
        digest.update(np.ascontiguousarray(pixels).tobytes())
        hashes.append(digest.hexdigest())
    seed = next(s for s in range(10_000) if sum(is_gold(h, seed=str(s), fraction=0.3) for h in hashes) == 5)
    gold_index = {index for index, h in enumerate(hashes) if is_gold(h, seed=str(seed), fraction=0.3)}
    store = AnnotationStore(tmp_path / "db" / "annotations.db")
    try:
        store.set_gold_fraction(0.3, seed=seed)
        gold_ids, ids = set(), []
        for index, (pixels, disc) in enumerate(images):
            case = store.add_case(pixels, prompt=f"lesion {index}", original_name=f"{index}.png")
            store.save_correction(case.id, disc, annotator="alice")
            ids.append(case.id)
            if index in gold_index:
                gold_ids.add(case.id)
        # The same pixels with another prompt: gold too, and in the same split as its twin.
        twin_of = ids[min(gold_index)]
        twin = store.add_case(images[min(gold_index)][0], prompt="another prompt", original_name="twin.png")
        store.save_correction(twin.id, images[min(gold_index)][1], annotator="alice")
        gold_ids.add(twin.id)
        for test_fraction in (0.0, 0.2):
            result = export_dataset(store, tmp_path / f"out{test_fraction}", val_fraction=0.2,
                                    test_fraction=test_fraction, seed=3)
            manifest = json.loads(result.manifest_path.read_text())
            split_of = {entry["case_id"]: entry["split"] for entry in manifest["cases"]}
            assert {entry["case_id"] for entry in manifest["cases"] if entry["gold"]} == gold_ids
            assert all(split_of[case_id] == "test" for case_id in gold_ids)
            assert split_of[twin.id] == split_of[twin_of] == "test"
            learnt = load_split(result.root, "train") + load_split(result.root, "val")
            trained_on = {int(sample.image_name[len("case"):-len(".png")]) for sample in learnt}
            assert trained_on and not trained_on & gold_ids
            assert manifest["params"]["gold_split"] == "test"
            others = len(ids) - len(gold_index)   # the 11 non-gold images split by the ratios as before
            sizes = dict(zip(("train", "val", "test"),
                             split_sizes(others, (1.0 - 0.2 - test_fraction, 0.2, test_fraction))))
            assert result.counts == {"train": sizes["train"], "val": sizes["val"],
                                     "test": sizes["test"] + len(gold_ids)}
    finally:
        store.close()


# --------------------------------------------------------------------------------------
# destination handling


def test_refuses_a_foreign_non_empty_folder(populated, tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    for overwrite, message in ((False, "not empty"), (True, "Refusing to overwrite")):
        with pytest.raises(ValueError, match=message):
            export_dataset(populated["store"], foreign, overwrite=overwrite)
    assert [p.name for p in foreign.iterdir()] == ["thesis.docx"]
    assert (foreign / "thesis.docx").read_text() == "precious"
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        export_dataset(populated["store"], tmp_path / "a_file", overwrite=True)
    assert _leftovers(tmp_path) == []


def test_empty_existing_folder_is_used(populated, tmp_path):
    (tmp_path / "out").mkdir()
    result = export_dataset(populated["store"], tmp_path / "out")
    assert sum(result.counts.values()) == NUM_CORRECTED


def test_overwrites_a_previous_export_only_when_asked(populated, exported):
    store, root = populated["store"], exported.root
    (root / "stale.txt").write_text("from the old export")
    with pytest.raises(ValueError, match="overwrite"):
        export_dataset(store, root)
    assert (root / "stale.txt").exists()
    result = export_dataset(store, root, seed=2, overwrite=True)
    assert result.root == root and not (root / "stale.txt").exists()
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["params"]["seed"] == 2 and manifest["params"]["val_fraction"] == 0.1
    for split in SPLITS:
        load_split(root, split)
    assert _leftovers(root.parent) == []


def test_failed_export_leaves_nothing(populated, tmp_path, monkeypatch):
    real = export_module.write_prompt_table
    calls = []

    def failing_write(path, rows):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        return real(path, rows)

    monkeypatch.setattr(export_module, "write_prompt_table", failing_write)
    out = tmp_path / "export"
    with pytest.raises(OSError, match="simulated"):
        export_dataset(populated["store"], out, make_zip=True)
    assert len(calls) == 3
    assert not out.exists() and not (tmp_path / "export.zip").exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_previous_export(populated, exported, monkeypatch):
    before = json.loads(exported.manifest_path.read_text())

    def failing_write(path, rows):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(export_module, "write_prompt_table", failing_write)
    with pytest.raises(OSError, match="simulated"):
        export_dataset(populated["store"], exported.root, seed=9, overwrite=True)
    assert json.loads(exported.manifest_path.read_text()) == before
    assert _leftovers(exported.root.parent) == []


def test_zip_contents(populated, tmp_path):
    result = export_dataset(populated["store"], tmp_path / "busi_v1", make_zip=True)
    assert result.zip_path == tmp_path / "busi_v1.zip"
    files = sorted(p.relative_to(tmp_path).as_posix() for p in result.root.rglob("*") if p.is_file())
    with zipfile.ZipFile(result.zip_path) as archive:
        assert archive.testzip() is None
        names = sorted(archive.namelist())
        assert names == files
        assert "busi_v1/manifest.json" in names and "busi_v1/Prompts_Folder/Train_text.xlsx" in names
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in archive.infolist())
        for name in names:
            assert archive.read(name) == (tmp_path / name).read_bytes()
    # a second export refuses to replace the zip unless asked, then replaces it
    with pytest.raises(ValueError):
        export_dataset(populated["store"], tmp_path / "busi_v1", make_zip=True)
    again = export_dataset(populated["store"], tmp_path / "busi_v1", make_zip=True, overwrite=True, seed=4)
    with zipfile.ZipFile(again.zip_path) as archive:
        assert json.loads(archive.read("busi_v1/manifest.json"))["params"]["seed"] == 4


# --------------------------------------------------------------------------------------
# command line, and training on the export


def test_cli_export(populated, tmp_path, capsys):
    out = tmp_path / "cli_export"
    code = main(["export", "--db", str(populated["db"]), "--out", str(out), "--val", "0.2", "--test", "0.2",
                 "--seed", "1", "--status", "corrected", "--status", "accepted", "--zip"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["total"] == NUM_CORRECTED and printed["out"] == str(out.absolute())
    assert printed["zip"] == str(out.absolute()) + ".zip" and Path(printed["manifest"]).is_file()
    assert sum(printed["counts"].values()) == NUM_CORRECTED
    for split in SPLITS:
        assert len(load_split(out, split)) == printed["counts"][split]
    code = main(["export", "--db", str(populated["db"]), "--out", str(out), "--status", "accepted", "--overwrite"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["total"] == 1


@pytest.mark.parametrize("extra, message", [
    (["--val", "1.5"], "val_fraction"),
    (["--val", "0.5", "--test", "0.5"], "below 1"),
    (["--annotator", "nobody"], "no corrected or accepted cases"),
])
def test_cli_export_user_errors(populated, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    code = main(["export", "--db", str(populated["db"]), "--out", str(out), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("medclipseg export: error:") and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_export_missing_database(tmp_path, capsys):
    code = main(["export", "--db", str(tmp_path / "nope.db"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "No annotation database" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()


def test_train_one_epoch_on_the_export(populated, tmp_path, capsys):
    root = tmp_path / "export"
    assert main(["export", "--db", str(populated["db"]), "--out", str(root), "--val", "0.2", "--test", "0.2"]) == 0
    run = tmp_path / "run"
    code = main(["train", "--data", str(root), "--out", str(run), "--backbone", "tiny", "--init", str(DEMO_WEIGHTS),
                 "--epochs", "1", "--batch-size", "4", "--device", "cpu"])
    assert code == 0
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    record = state["history"][0]
    assert np.isfinite(record["loss"]) and 0.0 <= record["val_dice"] <= 1.0
    for folder in ("best", "last"):
        assert (run / folder / "config.json").is_file() and (run / folder / "model.safetensors").is_file()
    config = json.loads((run / "last" / "config.json").read_text())
    assert config["metadata"]["epoch"] == 1 and len(config["metadata"]["history"]) == 1
    assert config["metadata"]["train_config"]["data"] == str(root)
