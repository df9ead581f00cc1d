"""Tests for medclipseg.datasets.layout: loading splits, table formats and precise errors."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from medclipseg.datasets.layout import (
    PROMPT_DESIGNS,
    SPLITS,
    LayoutError,
    Sample,
    describe_layout,
    load_split,
    read_prompt_table,
    table_stems,
    write_prompt_table,
)

SPLIT_SIZES = {"Train_Folder": 3, "Val_Folder": 2, "Test_Folder": 2}


def _rows(prefix, count, text="a polyp"):
    return [
        {
            "Image": f"{prefix}_{i}.png",
            "Description": f"{text} {i}",
            "Ground Truth": f"{prefix}_{i}.png",
        }
        for i in range(count)
    ]


def _make_dataset(root, suffix=".xlsx"):
    """3 train, 2 val, 2 test images with masks and the usual prompt tables."""
    for folder, count in SPLIT_SIZES.items():
        prefix = folder.split("_")[0].lower()
        (root / folder / "img").mkdir(parents=True)
        (root / folder / "label").mkdir()
        for i in range(count):
            image = np.full((8, 8, 3), 40 * i, np.uint8)
            mask = np.zeros((8, 8), np.uint8)
            mask[:4] = 255
            cv2.imwrite(str(root / folder / "img" / f"{prefix}_{i}.png"), image)
            cv2.imwrite(str(root / folder / "label" / f"{prefix}_{i}.png"), mask)
    prompts = root / "Prompts_Folder"
    write_prompt_table(prompts / f"Train_text{suffix}", _rows("train", 3))
    write_prompt_table(prompts / f"Train_text_25{suffix}", _rows("train", 1))
    write_prompt_table(prompts / f"Val_text{suffix}", _rows("val", 2))
    write_prompt_table(prompts / f"Test_text_original{suffix}", _rows("test", 2))
    write_prompt_table(
        prompts / f"Test_text_contradictory{suffix}", _rows("test", 2, text="no polyp")
    )
    return root


@pytest.fixture()
def dataset(tmp_path):
    return _make_dataset(tmp_path / "Kvasir")


def test_load_each_split(dataset):
    train = load_split(dataset, "train")
    assert [s.image_name for s in train] == ["train_0.png", "train_1.png", "train_2.png"]
    assert isinstance(train[0], Sample)
    assert train[0].image_path == dataset / "Train_Folder" / "img" / "train_0.png"
    assert train[0].mask_path == dataset / "Train_Folder" / "label" / "train_0.png"
    assert train[0].prompt == "a polyp 0"
    assert len(load_split(dataset, "val")) == 2
    test = load_split(dataset, "test")
    assert [s.prompt for s in test] == ["a polyp 0", "a polyp 1"]


def test_designs_and_percentages(dataset):
    contradictory = load_split(dataset, "test", design="contradictory")
    assert [s.prompt for s in contradictory] == ["no polyp 0", "no polyp 1"]
    subset = load_split(dataset, "train", pct=25)
    assert [s.image_name for s in subset] == ["train_0.png"]
    with pytest.raises(LayoutError, match="Train_text_50.xlsx, Train_text_50.csv"):
        load_split(dataset, "train", pct=50)
    with pytest.raises(LayoutError, match="Test_text_overdescriptive.xlsx"):
        load_split(dataset, "test", design="overdescriptive")
    with pytest.raises(LayoutError, match="Unknown prompt design"):
        load_split(dataset, "test", design="funny")
    with pytest.raises(LayoutError, match="Unknown split"):
        load_split(dataset, "training")
    with pytest.raises(LayoutError, match="integer from 1 to 100"):
        load_split(dataset, "train", pct=0)


def test_table_stems():
    assert table_stems("train") == ["Train_text"]
    assert table_stems("val", pct=10) == ["Val_text_10"]
    assert table_stems("test") == ["Test_text_original", "Test_text"]
    assert table_stems("test", design="missing_location", pct=25) == ["Test_text_missing_location"]
    assert SPLITS == ("train", "val", "test") and "underdescriptive" in PROMPT_DESIGNS


def test_plain_test_text_fallback_for_original(dataset):
    prompts = dataset / "Prompts_Folder"
    (prompts / "Test_text_original.xlsx").rename(prompts / "Test_text.xlsx")
    assert len(load_split(dataset, "test")) == 2
    with pytest.raises(LayoutError, match="Test_text_underdescriptive"):
        load_split(dataset, "test", design="underdescriptive")


def test_csv_only_dataset(tmp_path):
    root = _make_dataset(tmp_path / "csv_only", suffix=".csv")
    assert not list((root / "Prompts_Folder").glob("*.xlsx"))
    assert len(load_split(root, "train")) == 3
    assert len(load_split(root, "train", pct=25)) == 1
    assert len(load_split(root, "test", design="contradictory")) == 2


def test_csv_with_bom_blank_rows_and_loose_header(tmp_path, dataset):
    prompts = dataset / "Prompts_Folder"
    (prompts / "Val_text.xlsx").unlink()
    (prompts / "Val_text.csv").write_text(
        "\ufeffimage ,DESCRIPTION,ground_truth\n"
        " val_0.png , first prompt ,val_0.png\n"
        ",,\n"
        "\n"
        "val_1.png,\"second, with comma\",val_1.png\n",
        encoding="utf-8",
    )
    samples = load_split(dataset, "val")
    assert [s.prompt for s in samples] == ["first prompt", "second, with comma"]
    assert samples[0].image_name == "val_0.png"


def test_xlsx_preferred_over_csv(dataset):
    prompts = dataset / "Prompts_Folder"
    write_prompt_table(prompts / "Train_text.csv", _rows("train", 1, text="from csv"))
    assert [s.prompt for s in load_split(dataset, "train")] == [
        "a polyp 0",
        "a polyp 1",
        "a polyp 2",
    ]
    (prompts / "Train_text.xlsx").unlink()
    assert [s.prompt for s in load_split(dataset, "train")] == ["from csv 0"]


def test_xlsx_only_and_blank_rows(tmp_path):
    import openpyxl

    root = _make_dataset(tmp_path / "xlsx_only")
    path = root / "Prompts_Folder" / "Val_text.xlsx"
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["Image", "Description", "Ground Truth"])
    sheet.append(["val_0.png", "  spaced  ", "val_0.png"])
    sheet.append([None, None, None])
    sheet.append(["val_1.png", "second", "val_1.png"])
    workbook.save(path)
    assert [s.prompt for s in load_split(root, "val")] == ["spaced", "second"]


# ---------------------------------------------------------------- malformed layouts


def test_missing_root_and_folders(dataset, tmp_path):
    with pytest.raises(LayoutError, match="not found"):
        load_split(tmp_path / "nowhere", "train")
    shutil.rmtree(dataset / "Val_Folder" / "label")
    with pytest.raises(LayoutError, match="Val_Folder/label not found"):
        load_split(dataset, "val")
    shutil.rmtree(dataset / "Test_Folder")
    with pytest.raises(LayoutError, match="Test_Folder not found") as info:
        load_split(dataset, "test")
    assert "Test_Folder/img" in str(info.value)
    shutil.rmtree(dataset / "Prompts_Folder")
    with pytest.raises(LayoutError, match="Prompts_Folder not found"):
        load_split(dataset, "train")


def test_missing_table_lists_looked_for_names(dataset):
    (dataset / "Prompts_Folder" / "Val_text.xlsx").unlink()
    with pytest.raises(LayoutError) as info:
        load_split(dataset, "val")
    message = str(info.value)
    assert "Val_text.xlsx" in message and "Val_text.csv" in message and "looked for" in message


def test_missing_column_reports_columns_found(dataset):
    write_path = dataset / "Prompts_Folder" / "Train_text.csv"
    (dataset / "Prompts_Folder" / "Train_text.xlsx").unlink()
    write_path.write_text("Image,Description,Mask\ntrain_0.png,x,train_0.png\n", encoding="utf-8")
    with pytest.raises(LayoutError) as info:
        load_split(dataset, "train")
    message = str(info.value)
    assert "Prompts_Folder/Train_text.csv" in message
    assert "'Ground Truth'" in message and "'Mask'" in message and "'Image'" in message


def test_missing_image_file_names_row(dataset):
    rows = _rows("train", 3)
    rows[1]["Image"] = "ghost.png"
    write_prompt_table(dataset / "Prompts_Folder" / "Train_text.xlsx", rows)
    with pytest.raises(LayoutError) as info:
        load_split(dataset, "train")
    assert str(info.value) == (
        "Prompts_Folder/Train_text.xlsx row 3: image 'ghost.png' not found in Train_Folder/img"
    )


def test_missing_label_and_case_hint(dataset):
    rows = _rows("train", 3)
    rows[0]["Ground Truth"] = "TRAIN_0.PNG"
    rows[2]["Description"] = "  "
    write_prompt_table(dataset / "Prompts_Folder" / "Train_text.xlsx", rows)
    with pytest.raises(LayoutError) as info:
        load_split(dataset, "train")
    message = str(info.value)
    assert message.startswith("2 problems in Prompts_Folder/Train_text.xlsx")
    assert "row 2: label 'TRAIN_0.PNG' not found in Train_Folder/label" in message
    assert "case-sensitive" in message
    assert "row 4: empty 'Description' cell" in message
    assert len(info.value.problems) == 2


def test_duplicate_image_names(dataset):
    rows = _rows("train", 3)
    rows[2] = dict(rows[0])
    write_prompt_table(dataset / "Prompts_Folder" / "Train_text.csv", rows)
    (dataset / "Prompts_Folder" / "Train_text.xlsx").unlink()
    expected = r"row 4: duplicate image name 'train_0.png' \(already listed in row 2\)"
    with pytest.raises(LayoutError, match=expected):
        load_split(dataset, "train")


def test_path_like_names_refused(dataset):
    rows = _rows("train", 1)
    rows[0]["Image"] = "../Val_Folder/img/val_0.png"
    write_prompt_table(dataset / "Prompts_Folder" / "Train_text.xlsx", rows)
    with pytest.raises(LayoutError, match="plain file name"):
        load_split(dataset, "train")


# ---------------------------------------------------------------- writing and describing


def test_write_and_read_round_trip(tmp_path):
    rows = [
        {"Image": "a.png", "Description": "=SUM(A1) looks like a formula", "Ground Truth": "a.png"},
        {"Image": "b.png", "Description": "naïve text, “quotes”", "Ground Truth": "b.png"},
    ]
    for suffix in (".xlsx", ".csv"):
        path = write_prompt_table(tmp_path / "out" / f"table{suffix}", rows)
        read = read_prompt_table(path)
        assert [{k: r[k] for k in ("Image", "Description", "Ground Truth")} for r in read] == rows
        assert [r["row"] for r in read] == [2, 3]
    with pytest.raises(ValueError, match="use .xlsx or .csv"):
        write_prompt_table(tmp_path / "table.txt", rows)
    with pytest.raises(ValueError, match="Ground Truth"):
        write_prompt_table(tmp_path / "bad.csv", [{"Image": "a.png", "Description": "x"}])
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_describe_layout(dataset):
    summary = describe_layout(dataset)
    assert summary["splits"]["train"] == {
        "folder": "Train_Folder",
        "exists": True,
        "images": 3,
        "labels": 3,
    }
    assert summary["splits"]["val"]["images"] == 2 and summary["splits"]["test"]["labels"] == 2
    assert "Train_text_25.xlsx" in summary["tables"]
    assert summary["test_designs"] == ["original", "contradictory"]
    assert summary["train_percentages"] == [25, 100]
    assert summary["val_percentages"] == [100]
    with pytest.raises(LayoutError):
        describe_layout(dataset / "missing")
