"""Refused review decisions write nothing; a reviewer's edit continues the chain under review; a case
never gets more raters than the project asks for; a stale consensus is never written (on both engines)."""
from __future__ import annotations

import numpy as np
import pytest

from annotation_support import box, case_with_prediction, dice, sql_connection
from medclipseg.annotation.errors import VersionConflict
from medclipseg.annotation.store import StorageError


def footprint(store) -> tuple:
    """Every row a decision could write, and every file under the store's folder."""
    conn = sql_connection(store)
    rows = tuple(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                 for table in ("corrections", "reviews", "drafts"))
    state = conn.execute("SELECT id, review_state, review_version, status FROM cases ORDER BY id").fetchall()
    conn.close()
    files = sorted(str(path) for path in store.files_dir.rglob("*") if path.is_file())
    return rows, tuple(map(tuple, state)), tuple(files)


def test_a_refused_decision_with_an_edit_writes_nothing(store):
    case = case_with_prediction(store, 1)[0]
    store.save_correction(case.id, box(5, 5), annotator="ann")
    store.submit_for_review(case.id, by="ann")
    before = footprint(store)
    with pytest.raises(StorageError, match="at most 2,000 characters"):
        store.decide_review(case.id, reviewer="rev", version=1, approve=True, comment="x" * 2001, mask=box(6, 6))
    with pytest.raises(StorageError, match="approved, not rejected"):
        store.decide_review(case.id, reviewer="rev", version=1, approve=False, comment="no", mask=box(6, 6))
    with pytest.raises(StorageError, match="Say why in a comment"):
        store.decide_review(case.id, reviewer="rev", version=1, approve=False, comment="  ")
    assert footprint(store) == before
    # The annotator saves again after the reviewer opened v1: the reviewer's edit of v1 is a conflict
    # refused before it is saved.
    store.save_correction(case.id, box(7, 7), annotator="ann", base_version=1)
    before = footprint(store)
    with pytest.raises(VersionConflict) as conflict:
        store.decide_review(case.id, reviewer="rev", version=1, approve=True, mask=box(6, 6))
    assert conflict.value.latest_version == 2
    assert footprint(store) == before
    decided = store.decide_review(case.id, reviewer="rev", version=2, approve=True, mask=box(6, 6))
    assert decided["new_version"] == 3
    assert store.review_history(case.id)[-1]["new_version"] == 3


def test_with_several_raters_a_reviewer_edit_continues_the_chain_under_review(store):
    store.set_project_settings(raters_per_case=2, review_required=True)
    case = case_with_prediction(store, 1)[0]
    store.save_correction(case.id, box(5, 5), annotator="ann")
    store.save_correction(case.id, box(6, 8), annotator="bea")  # the last rater: submitted for review
    status = store.review_status(case.id)
    assert (status["review_state"], status["review_version"], status["rater_count"]) == ("submitted", 2, 2)
    # A third person's label is refused, writing nothing: the case has its two raters.
    before = footprint(store)
    with pytest.raises(StorageError, match="already has the labels of its 2 raters"):
        store.save_correction(case.id, box(1, 1), annotator="cyd", others_allowed=False)
    assert footprint(store) == before
    # The reviewer sees the version under review and a save of theirs continues bea's chain.
    assert store.latest_correction(case.id, "rev")["version"] == 2
    saved = store.save_correction(case.id, box(6, 9), annotator="rev", base_version=2)
    assert (saved.version, saved.replaces_version) == (3, 2)
    conn = sql_connection(store)
    assert conn.execute("SELECT rater, annotator FROM corrections WHERE version = 3 AND case_id = ?",
                        [case.id]).fetchone() == ("bea", "rev")
    conn.close()
    assert store.review_status(case.id)["rater_count"] == 2


def test_without_review_a_complete_case_takes_no_further_rater(store):
    store.set_project_settings(raters_per_case=2)
    case = case_with_prediction(store, 1)[0]
    store.save_correction(case.id, box(5, 5), annotator="ann")
    store.save_correction(case.id, box(6, 8), annotator="bea")
    before = footprint(store)
    with pytest.raises(StorageError, match="already has the labels of its 2 raters"):
        store.save_correction(case.id, box(1, 1), annotator="cyd")  # not even with others' work allowed
    assert footprint(store) == before
    store.save_correction(case.id, box(5, 6), annotator="ann", base_version=1)  # a rater's own chain goes on


def test_a_consensus_computed_before_a_concurrent_save_is_not_written(store, monkeypatch):
    store.set_project_settings(raters_per_case=3)
    case = case_with_prediction(store, 1)[0]
    masks = {"ann": box(5, 5), "bea": box(6, 6), "cyd": box(2, 14)}
    store.save_correction(case.id, masks["ann"], annotator="ann")
    computing = type(store).case_agreement
    calls = []

    def racing(self, case_id, **kwargs):
        found = computing(self, case_id, **kwargs)  # what bea's save saw: two raters
        calls.append(len(found.raters))
        if len(calls) == 1:  # cyd saves while bea's consensus is being computed
            self.save_correction(case_id, masks["cyd"], annotator="cyd")
        return found

    monkeypatch.setattr(type(store), "case_agreement", racing)
    store.save_correction(case.id, masks["bea"], annotator="bea")
    assert calls == [2, 3]
    conn = sql_connection(store)
    disagreement, path = conn.execute("SELECT disagreement, consensus_path FROM cases WHERE id = ?",
                                      [case.id]).fetchone()
    conn.close()
    pairs = [dice(masks[a], masks[b]) for a, b in (("ann", "bea"), ("ann", "cyd"), ("bea", "cyd"))]
    assert disagreement == pytest.approx(1 - np.mean(pairs))  # the three raters', not bea's stale two
    consensus = [p for p in store.files_dir.rglob("*-consensus.png")]
    assert [p.relative_to(store.files_dir).as_posix() for p in consensus] == [path]  # the stale file is gone


@pytest.mark.parametrize("method", ["staple", "majority"])
def test_export_labels_a_case_by_its_raters_consensus_and_leaves_half_rated_cases_out(store, tmp_path, method):
    import cv2
    import SimpleITK as sitk

    from medclipseg.annotation.export import export_dataset

    store.set_project_settings(raters_per_case=3)
    complete = case_with_prediction(store, 1)[0]
    half = case_with_prediction(store, 2)[0]
    masks = {"ann": box(5, 5), "bea": box(6, 8), "cyd": box(4, 10, height=14)}
    for name, mask in masks.items():
        store.save_correction(complete.id, mask, annotator=name)
    store.save_correction(half.id, box(1, 1), annotator="ann")  # one rater of three so far
    result = export_dataset(store, tmp_path / "out", val_fraction=0.0, test_fraction=0.0, consensus=method)
    manifest = __import__("json").loads(result.manifest_path.read_text())
    assert [entry["case_id"] for entry in manifest["cases"]] == [complete.id]
    (entry,) = manifest["cases"]
    label = cv2.imread(str(result.root / entry["label"]), cv2.IMREAD_GRAYSCALE) > 0
    stack = np.stack([masks[name] for name in ("ann", "bea", "cyd")])
    if method == "majority":
        expected = stack.sum(axis=0) >= 2  # two of three raters
        assert entry["label_kind"] == "consensus (majority vote)"
    else:  # SimpleITK's STAPLE filter, probability above one half
        images = [sitk.GetImageFromArray(mask.astype(np.uint8)) for mask in stack]
        expected = sitk.GetArrayFromImage(sitk.STAPLE(images, 1.0)) > 0.5
        assert entry["label_kind"] == "consensus (STAPLE)"
    np.testing.assert_array_equal(label, expected)
    for number, name in enumerate(sorted(masks)):
        rater = cv2.imread(str(result.root / entry["raters"][name]), cv2.IMREAD_GRAYSCALE) > 0
        np.testing.assert_array_equal(rater, masks[name])
    assert result.multi_rater_cases == 1
    with pytest.raises(ValueError, match="consensus must be one of staple, majority"):
        export_dataset(store, tmp_path / "other", consensus="mean")


def test_a_reviewer_does_not_decide_on_their_own_version(store):
    case = case_with_prediction(store, 1)[0]
    store.save_correction(case.id, box(5, 5), annotator="rev")
    store.submit_for_review(case.id, by="rev")
    before = footprint(store)
    for approve, comment in ((True, ""), (False, "looks wrong")):
        with pytest.raises(StorageError, match="v1 was saved by you, rev; another reviewer or an admin decides on this case"):
            store.decide_review(case.id, reviewer="rev", version=1, approve=approve, comment=comment,
                                own_allowed=False)
    with pytest.raises(StorageError, match="saved by you"):
        store.decide_review(case.id, reviewer="rev", version=1, approve=True, mask=box(6, 6), own_allowed=False)
    assert footprint(store) == before
    assert store.decide_review(case.id, reviewer="kim", version=1, approve=True, own_allowed=False)["decision"] == \
        "approved"


def test_a_reviewer_who_rated_a_case_does_not_decide_on_it(store):
    store.set_project_settings(raters_per_case=2, review_required=True)
    case = case_with_prediction(store, 1)[0]
    store.save_correction(case.id, box(5, 5), annotator="rev")
    store.save_correction(case.id, box(6, 8), annotator="bea")  # the last rater: v2 under review
    before = footprint(store)
    with pytest.raises(StorageError, match="v1 was saved by you, rev"):
        store.decide_review(case.id, reviewer="rev", version=2, approve=True, own_allowed=False)
    assert footprint(store) == before
    assert store.decide_review(case.id, reviewer="kim", version=2, approve=True, own_allowed=False)["decision"] == \
        "approved"
