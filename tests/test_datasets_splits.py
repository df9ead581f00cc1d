"""Tests for medclipseg.datasets.splits: split sizes and the destination-folder guard."""
from __future__ import annotations

import json

import numpy as np
import pytest

from medclipseg.datasets.splits import DestinationError, check_destination, split_sizes

# -- split sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize("total, ratios, sizes", [
    (0, (0.7, 0.1, 0.2), [0, 0, 0]),
    (1, (0.7, 0.1, 0.2), [1, 0, 0]),
    (2, (0.8, 0.1, 0.1), [2, 0, 0]),
    (2, (0.7, 0.1, 0.2), [1, 0, 1]),  # 0.4 left over twice, and float arithmetic puts test a hair ahead
    (3, (0.7, 0.1, 0.2), [1, 1, 1]),  # enough items: every positive split gets one
    (10, (0.7, 0.1, 0.2), [7, 1, 2]),
    (100, (0.7, 0.1, 0.2), [70, 10, 20]),
    (10, (0.5, 0.25, 0.25), [5, 3, 2]),  # a tie in remainders goes to the earlier split
    (3, (0.8, 0.0, 0.2), [2, 0, 1]),
    (5, (0.0, 0.0, 1.0), [0, 0, 5]),  # a zero ratio never gets an item
    (2, (0.2, 0.4, 0.4), [1, 0, 1]),  # too few items for all: train first
    (4, (0.1, 0.45, 0.45), [1, 1, 2]),
    (1, (0.0, 1.0, 1.0), [0, 1, 0]),
    (7, (7, 1, 2), [5, 1, 1]),  # ratios need not sum to 1
])
def test_split_sizes(total, ratios, sizes):
    assert split_sizes(total, ratios) == sizes


def test_split_sizes_sum_and_follow_the_ratios():
    rng = np.random.default_rng(0)
    for _ in range(300):
        count = int(rng.integers(1, 5))
        ratios = rng.random(count) * (rng.random(count) > 0.2)
        if ratios.sum() == 0:
            continue
        total = int(rng.integers(0, 200))
        sizes = split_sizes(total, ratios)
        assert sum(sizes) == total and all(s >= 0 for s in sizes)
        positive = ratios > 0
        assert all(s == 0 for s, p in zip(sizes, positive) if not p)
        if total >= positive.sum():
            assert all(s >= 1 for s, p in zip(sizes, positive) if p)
        if total >= 1 and positive[0]:
            assert sizes[0] >= 1
        shares = ratios / ratios.sum() * total
        # Each size is within one item of its share (plus the minimum-one moves).
        assert all(abs(s - share) <= 1 + positive.sum() for s, share in zip(sizes, shares))


def test_split_sizes_accept_numpy_integers():
    assert split_sizes(np.int64(10), np.array([0.7, 0.1, 0.2])) == [7, 1, 2]


@pytest.mark.parametrize("total, ratios", [
    (-1, (0.7, 0.1, 0.2)), (2.5, (1, 1)), (True, (1, 1)), (3, ()), (3, (0, 0)), (3, (1, -1)),
    (3, (1, float("nan"))), (3, (1, float("inf"))),
])
def test_split_sizes_refuse_bad_input(total, ratios):
    with pytest.raises(ValueError):
        split_sizes(total, ratios)


# -- destination guard ------------------------------------------------------------------------


def _ours(folder):
    try:
        return json.loads((folder / "made_by.json").read_text()).get("writer") == "us"
    except (OSError, ValueError):
        return False


def _check(folder, overwrite=True):
    return check_destination(folder, is_ours=_ours, what="a previous output", marker="made_by.json from us",
                             overwrite=overwrite)


def test_missing_and_empty_folders_are_free(tmp_path):
    assert _check(tmp_path / "new") == "missing"
    assert _check(tmp_path / "new", overwrite=False) == "missing"
    (tmp_path / "empty").mkdir()
    assert _check(tmp_path / "empty", overwrite=False) == "empty"


def test_previous_output_is_replaced_only_with_overwrite(tmp_path):
    folder = tmp_path / "previous"
    folder.mkdir()
    (folder / "made_by.json").write_text(json.dumps({"writer": "us"}))
    assert _check(folder) == "ours"
    with pytest.raises(DestinationError, match="not empty.*overwrite"):
        _check(folder, overwrite=False)


def test_foreign_folder_is_refused_and_untouched(tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.docx").write_text("precious")
    (folder / "made_by.json").write_text(json.dumps({"writer": "someone else"}))
    with pytest.raises(DestinationError, match="Refusing to overwrite .*not a previous output .*made_by.json"):
        _check(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["chapter1.docx", "made_by.json"]


def test_files_and_broken_links_are_refused(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DestinationError, match="not a folder"):
        _check(tmp_path / "a_file")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(DestinationError, match="broken symbolic link"):
        _check(tmp_path / "link")


def test_destination_error_is_both_a_value_and_a_file_exists_error():
    # The CLI answers ValueError in words; callers of the phantom writer catch FileExistsError.
    assert issubclass(DestinationError, ValueError) and issubclass(DestinationError, FileExistsError)
    assert str(DestinationError("message")) == "message"
