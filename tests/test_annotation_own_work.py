"""An annotator saves and skips only their own work (``others_allowed=False``, the annotator's role in
medclipseg.team.access); a reviewer or an admin may act on anyone's. Every refusal writes nothing.
Run on each engine the store supports."""
from __future__ import annotations

import numpy as np
import pytest

from annotation_support import case_with_prediction, run_sql, stored_files
from medclipseg.annotation.store import StorageError


def box(top, left, height=10, width=12, shape=(24, 32)):
    mask = np.zeros(shape, bool)
    mask[top:top + height, left:left + width] = True
    return mask


def state(store) -> tuple:
    """The rows an attempt could touch, and the files beside the database."""
    return (run_sql(store, "SELECT * FROM corrections ORDER BY id"),
            run_sql(store, "SELECT id, status, status_by, assigned_to, lease_expires, review_state FROM cases "
                           "ORDER BY id"),
            run_sql(store, "SELECT case_id, annotator FROM drafts ORDER BY case_id, annotator"),
            stored_files(store))


def refused(store, attempt, words: str) -> None:
    before = state(store)
    with pytest.raises(StorageError, match=words):
        attempt()
    assert state(store) == before


def test_an_annotator_may_not_save_a_case_another_person_holds(store):
    case = case_with_prediction(store, 1)[0]
    assert store.next_case("alice").id == case.id  # leased to alice
    refused(store, lambda: store.save_correction(case.id, box(2, 2), annotator="bob", others_allowed=False),
            "open by alice .* only they, a reviewer or an admin may save it")
    refused(store, lambda: store.save_correction(case.id, None, annotator="bob", status="accepted",
                                                 others_allowed=False), "open by alice")
    saved = store.save_correction(case.id, box(2, 2), annotator="alice", others_allowed=False)
    assert saved.version == 1
    # Once the lease has run out (or was never taken) the case is nobody's to guard.
    other = case_with_prediction(store, 2)[0]
    assert store.next_case("alice", skip_case_id=case.id).id == other.id
    run_sql(store, "UPDATE cases SET lease_expires = 1 WHERE id = :id", {"id": other.id})
    assert store.save_correction(other.id, box(3, 3), annotator="bob", others_allowed=False).annotator == "bob"


def test_an_annotator_may_not_save_over_someone_elses_version_and_a_reviewer_may(store):
    case = case_with_prediction(store, 1)[0]
    store.save_correction(case.id, box(2, 2), annotator="alice")
    refused(store, lambda: store.save_correction(case.id, box(4, 4), annotator="bob", others_allowed=False),
            r"newest version, v1, was saved by alice; only a reviewer or an admin may save over")
    refused(store, lambda: store.save_correction(case.id, box(4, 4), annotator="bob", base_version=1,
                                                 others_allowed=False), "saved by alice")
    # Alice continues her own chain; a reviewer (others allowed) may save over it.
    assert store.save_correction(case.id, box(3, 3), annotator="alice", base_version=1,
                                 others_allowed=False).version == 2
    assert store.save_correction(case.id, box(5, 5), annotator="rev", base_version=2).version == 3


def test_several_raters_each_save_their_own_chain(store):
    store.set_project_settings(raters_per_case=2)
    case = case_with_prediction(store, 1)[0]
    store.save_correction(case.id, box(2, 2), annotator="alice", others_allowed=False)
    # Bob's chain is his own: alice's version is not his to be refused over.
    assert store.save_correction(case.id, box(4, 4), annotator="bob", others_allowed=False).version == 2


def test_an_annotator_may_not_save_a_label_under_review_or_approved(store):
    store.set_project_settings(review_required=True)
    case = case_with_prediction(store, 1)[0]
    store.save_correction(case.id, box(2, 2), annotator="alice", others_allowed=False)
    store.submit_for_review(case.id, by="alice")
    refused(store, lambda: store.save_correction(case.id, box(3, 3), annotator="alice", others_allowed=False),
            "is submitted for review; only a reviewer or an admin may save a new version")
    store.decide_review(case.id, reviewer="rev", version=1, approve=True)
    refused(store, lambda: store.save_correction(case.id, box(3, 3), annotator="alice", others_allowed=False),
            "was approved by a reviewer")
    # A rejected label is the annotator's to fix again.
    other = case_with_prediction(store, 2)[0]
    store.save_correction(other.id, box(2, 2), annotator="alice", others_allowed=False)
    store.submit_for_review(other.id, by="alice")
    store.decide_review(other.id, reviewer="rev", version=1, approve=False, comment="too small")
    assert store.save_correction(other.id, box(1, 1, 14, 16), annotator="alice", base_version=1,
                                 others_allowed=False).version == 2


def test_an_annotator_skips_only_a_case_they_hold_or_saved(store):
    cases = [case_with_prediction(store, seed)[0].id for seed in range(3)]
    held = store.next_case("bob").id
    loose, shared = (case_id for case_id in cases if case_id != held)
    refused(store, lambda: store.skip(loose, annotator="bob", others_allowed=False),
            "is not open for you: take it from the queue")
    assert store.skip(held, annotator="bob", others_allowed=False) == "skipped"
    # A case with a version someone else saved, even under the annotator's own newer one.
    store.save_correction(shared, box(2, 2), annotator="alice")
    store.save_correction(shared, box(3, 3), annotator="bob")
    refused(store, lambda: store.skip(shared, annotator="bob", discard_saved=True, others_allowed=False),
            "has a version saved by alice; only a reviewer or an admin may skip")
    assert store.skip(shared, annotator="rev", discard_saved=True) == "skipped"  # others allowed
    # Their own saved case, with nobody holding it: theirs to skip.
    own = case_with_prediction(store, 4)[0]
    store.save_correction(own.id, box(2, 2), annotator="bob", others_allowed=False)
    assert store.skip(own.id, annotator="bob", discard_saved=True, others_allowed=False) == "skipped"
