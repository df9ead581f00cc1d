"""Several raters per case and the review step, in the store (medclipseg.annotation.review)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from annotation_support import box, case_with_prediction, dice, sql_connection
from medclipseg.annotation.errors import VersionConflict
from medclipseg.annotation.export import export_dataset
from medclipseg.annotation.retraining import _reviewed_rows
from medclipseg.annotation.store import AnnotationStore, StorageError


def test_a_case_goes_to_k_different_raters_and_keeps_each_chain(store):
    store.set_project_settings(raters_per_case=3)
    cases = [case_with_prediction(store, seed)[0] for seed in range(2)]
    masks = {"ann": box(5, 5), "bea": box(6, 6), "cyd": box(5, 9)}
    served = {}
    for name, mask in masks.items():
        case = store.next_case(name, acquisition="random")
        served[name] = case.id
        store.save_correction(case.id, mask, annotator=name)
    first = served["ann"]
    assert set(served.values()) == {first}  # one case, three raters in turn
    # Raters never see each other's masks: each opens their own chain (a newcomer: none).
    assert store.latest_correction(first, "bea")["annotator"] == "bea"
    assert store.latest_correction(first, "dan") is None
    assert store.latest_correction(first)["version"] == 3
    # Nobody is served a case twice: ann gets the other case, then nothing.
    other = cases[1].id if first == cases[0].id else cases[0].id
    assert store.next_case("ann", acquisition="random").id == other
    store.save_correction(other, box(1, 1), annotator="ann")
    assert store.next_case("ann", acquisition="random") is None
    assert store.get_case(first).status == "corrected"
    conn = sql_connection(store)
    rows = conn.execute("SELECT version, rater, annotator, replaces_version FROM corrections WHERE case_id = ? "
                        "ORDER BY version", [first]).fetchall()
    assert rows == [(1, "ann", "ann", None), (2, "bea", "bea", None), (3, "cyd", "cyd", None)]
    count, disagreement, consensus_path = conn.execute(
        "SELECT rater_count, disagreement, consensus_path FROM cases WHERE id = ?", [first]).fetchone()
    conn.close()
    pairs = [dice(masks[a], masks[b]) for a, b in (("ann", "bea"), ("ann", "cyd"), ("bea", "cyd"))]
    assert count == 3 and disagreement == pytest.approx(1 - np.mean(pairs))
    found = store.case_agreement(first)
    np.testing.assert_array_equal(store.load_mask(consensus_path) > 0, found.consensus)
    # A rater's second save continues their own chain and is checked against it only.
    again = store.save_correction(first, box(4, 4), annotator="bea", base_version=2)
    assert (again.version, again.replaces_version) == (4, 2)
    with pytest.raises(VersionConflict):
        store.save_correction(first, box(4, 4), annotator="ann", base_version=None)
    # Training and export use the consensus; the export carries each rater's mask.
    (trained,) = [row for row in _reviewed_rows(store) if row["case_id"] == first]
    assert trained["mask_path"].endswith("-consensus.png")


def test_review_submit_decide_return_and_conflicts(store, tmp_path):
    case = case_with_prediction(store, 1)[0]
    other = case_with_prediction(store, 2)[0]
    store.save_correction(case.id, box(5, 5), annotator="ann")
    store.save_correction(other.id, box(3, 3), annotator="ann")
    with pytest.raises(StorageError, match="saved by ann; only they, a reviewer or an admin"):
        store.submit_for_review(case.id, by="bob", version=1)
    with pytest.raises(StorageError, match="has not been submitted"):
        store.decide_review(case.id, reviewer="rev", version=1, approve=True)
    assert store.submit_for_review(case.id, by="ann") == 1
    store.submit_for_review(other.id, by="ann")
    taken = store.next_review("rev")
    assert taken.id in (case.id, other.id) and store.get_case(taken.id).assigned_to == "rev"
    assert store.next_review("rev2").id != taken.id  # two reviewers never hold one case
    with pytest.raises(StorageError, match="Say why in a comment"):
        store.decide_review(case.id, reviewer="rev", version=1, approve=False, comment=" ")
    store.decide_review(case.id, reviewer="rev", version=1, approve=False, comment="misses the lower edge")
    # The rejected case goes back to ann first.
    assert store.next_case("ann").id == case.id
    fixed = store.save_correction(case.id, box(5, 5, height=14), annotator="ann", base_version=1)
    store.submit_for_review(case.id, by="ann")
    # A reviewer who opened v2 while ann saves v3 gets a conflict, and nothing is decided.
    store.save_correction(case.id, box(5, 5, height=15), annotator="ann", base_version=fixed.version)
    reviews_before = len(store.review_history(case.id))
    with pytest.raises(VersionConflict, match="saved as v3 by ann"):
        store.decide_review(case.id, reviewer="rev", version=2, approve=True)
    assert len(store.review_history(case.id)) == reviews_before
    # The reviewer edits v3 and approves the edit: v4, in the same chain, approved.
    decided = store.decide_review(case.id, reviewer="rev", version=3, approve=True, comment="trimmed",
                                  mask=box(5, 5, height=13))
    assert decided == {"case_id": case.id, "decision": "approved", "version": 3, "new_version": 4}
    history = [(r["action"], r["by"], r["version"], r["new_version"], r["comment"])
               for r in store.review_history(case.id)]
    assert history == [("submitted", "ann", 1, None, ""), ("rejected", "rev", 1, None, "misses the lower edge"),
                       ("submitted", "ann", 2, None, ""), ("approved", "rev", 3, 4, "trimmed")]
    assert store.get_case(case.id).status == "corrected"

    # With the review step on, only approved versions train and export.
    store.set_project_settings(review_required=True)
    assert [(row["case_id"], row["version"]) for row in _reviewed_rows(store)] == [(case.id, 4)]
    store.set_gold_fraction(0.0)
    result = export_dataset(store, tmp_path / "export", make_zip=False)
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert [(entry["case_id"], entry["version"]) for entry in manifest["cases"]] == [(case.id, 4)]
    assert sum(result.counts.values()) == 1


def test_project_settings_are_checked(store):
    assert (store.project_settings().review_required, store.project_settings().raters_per_case) == (False, 1)
    for bad in (0, 11, 2.5, True, "3"):
        with pytest.raises(StorageError, match="raters per case"):
            store.set_project_settings(raters_per_case=bad)
    with pytest.raises(StorageError, match="true or false"):
        store.set_project_settings(review_required="yes")
    assert store.set_project_settings(raters_per_case=2, review_required=True).raters_per_case == 2


def test_several_raters_with_review_submit_the_case_when_the_last_rater_saves(store, tmp_path):
    store.set_project_settings(raters_per_case=2, review_required=True)
    case = case_with_prediction(store, 1)[0]
    store.save_correction(case.id, box(5, 5), annotator="ann")
    assert store.get_case(case.id).status == "unreviewed" and store.review_queue() == []
    store.save_correction(case.id, box(5, 7), annotator="bea")
    (queued,) = store.review_queue(order="disagreement")
    assert queued["id"] == case.id and queued["rater_count"] == 2
    assert queued["disagreement"] == pytest.approx(1 - dice(box(5, 5), box(5, 7)))
    store.decide_review(case.id, reviewer="rev", version=2, approve=True)
    store.set_gold_fraction(0.0)
    export_dataset(store, tmp_path / "export", make_zip=False)
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    (entry,) = manifest["cases"]
    assert entry["label_kind"] == "consensus (STAPLE)" and set(entry["raters"]) == {"ann", "bea"}
    for rater, path in entry["raters"].items():
        import cv2

        written = cv2.imread(str(tmp_path / "export" / path), cv2.IMREAD_GRAYSCALE) > 0
        np.testing.assert_array_equal(written, box(5, 5) if rater == "ann" else box(5, 7))
    assert entry["agreement"]["mean_pairwise_dice"] == pytest.approx(dice(box(5, 5), box(5, 7)))


def test_one_of_several_raters_passes_on_a_case_and_the_others_still_get_it(store):
    store.set_project_settings(raters_per_case=2)
    case = case_with_prediction(store, 1)[0]
    assert store.next_case("ann").id == case.id
    assert store.skip(case.id, annotator="ann") == "declined"
    assert store.get_case(case.id).status == "unreviewed"
    assert store.next_case("ann") is None  # never again to ann
    assert store.next_case("bea").id == case.id  # the others still get it
    store.release(case.id, annotator="bea")
    assert store.unskip(case.id, annotator="ann") == "unreviewed"  # ann takes it back
    assert store.next_case("ann").id == case.id
    store.set_project_settings(raters_per_case=1)
    assert store.skip(case.id, annotator="ann") == "skipped"  # one rater: out of the queue for all
