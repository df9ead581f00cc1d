"""`medclipseg.annotation.queue`: acquisition order, leases (next_case, claim, release) and the queue summary."""
from __future__ import annotations

import time

import numpy as np
import pytest

from annotation_support import sql_connection, QUEUE_SCORES, SCORE_KEYS, fill_scored_queue, image
from medclipseg.annotation.queue import ACQUISITIONS
from medclipseg.annotation.store import AnnotationStore, QueueSummary, StorageError


@pytest.mark.parametrize("acquisition", ["foreground_entropy", "boundary_entropy", "mutual_information",
                                         "image_entropy"])
def test_next_case_orders_by_score(store, acquisition):
    cases = fill_scored_queue(store)
    column = SCORE_KEYS.index(ACQUISITIONS[acquisition].score_key)
    expected = [cases[i].id for i in sorted(range(4), key=lambda i: -QUEUE_SCORES[i][column])]
    # Four annotators in turn: each lease is live, so each gets the next case in score order.
    served = [store.next_case(f"annotator{i}", acquisition=acquisition).id for i in range(4)]
    assert served == expected
    assert store.next_case("annotator4", acquisition=acquisition) is None
    assert store.get_case(expected[0]).assigned_to == "annotator0"


def test_next_case_random_baseline_and_statuses(store):
    cases = fill_scored_queue(store, 6)
    no_prediction = store.add_case(image(999), prompt="a round lesion", original_name="np.png")
    store.set_status(cases[0].id, "skipped", annotator="alice")
    store.save_correction(cases[1].id, np.zeros((24, 32), bool), annotator="alice", status="accepted")
    store.save_correction(cases[2].id, np.zeros((24, 32), bool), annotator="alice")
    conn = sql_connection(store)
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


def test_set_status_clears_lease_and_refuses_unknown(store):
    (case,) = fill_scored_queue(store, 1)
    assert store.next_case("alice").id == case.id
    store.set_status(case.id, "skipped", annotator="alice")
    skipped = store.get_case(case.id)
    assert (skipped.status, skipped.assigned_to) == ("skipped", None)
    with pytest.raises(StorageError, match="Unknown case status"):
        store.set_status(case.id, "lost", annotator="alice")
    with pytest.raises(StorageError, match="does not exist"):
        store.set_status(4242, "skipped", annotator="alice")
    with pytest.raises(StorageError, match="annotator"):
        store.set_status(case.id, "skipped", annotator=" ")


def test_next_case_same_annotator_batch_and_release(store):
    first_batch = fill_scored_queue(store, 2, batch="week1")
    second_batch = fill_scored_queue(store, 2, batch="week2", offset=50)
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
    daves = store.next_case("dave", batch="week1", acquisition="foreground_entropy")
    assert daves.id == first_batch[1].id  # the higher foreground score
    # claim: an uploaded case is leased to its uploader and kept from others.
    assert store.claim(first_batch[0].id, annotator="erin") is True
    assert store.claim(first_batch[0].id, annotator="frank") is False
    assert store.claim(daves.id, annotator="frank") is False
    assert store.next_case("frank", batch="week1") is None
    assert store.claim(first_batch[0].id, annotator="erin") is True  # own lease: renewed
    with pytest.raises(StorageError, match="does not exist"):
        store.claim(4242, annotator="erin")
    store.release(4242, annotator="erin")  # nothing to release: no error


def test_lease_expiry(store_location, tmp_path):
    with AnnotationStore(store_location, lease_seconds=0.05, files_dir=tmp_path / "files") as store:
        (case,) = fill_scored_queue(store, 1)
        assert store.next_case("alice").id == case.id
        assert store.next_case("bob") is None
        time.sleep(0.1)
        assert store.next_case("bob").id == case.id
        assert store.get_case(case.id).assigned_to == "bob"


def test_queue_summary(store):
    assert store.queue_summary() == QueueSummary(unreviewed=0, corrected=0, accepted=0, skipped=0,
                                                 saved_versions=0, in_review=0)
    cases = fill_scored_queue(store, 4)
    leased = store.next_case("alice")
    corrected, skipped = [case.id for case in cases if case.id != leased.id][:2]
    store.save_correction(corrected, np.zeros((24, 32), bool), annotator="bob")
    store.save_correction(corrected, np.ones((24, 32), bool), annotator="bob")
    store.set_status(skipped, "skipped", annotator="bob")
    summary = store.queue_summary()
    assert summary == QueueSummary(unreviewed=2, corrected=1, accepted=0, skipped=1, saved_versions=2, in_review=1)
    assert summary.text() == "2 unreviewed · 1 corrected · 0 accepted · 1 skipped · 2 saved versions"


def test_editing_renews_the_lease_so_a_long_correction_is_not_served_to_another(store_location, tmp_path):
    with AnnotationStore(store_location, lease_seconds=1.5, files_dir=tmp_path / "files") as store:
        first, second, _third = fill_scored_queue(store, 3)
        taken = store.next_case("alice", acquisition="random")
        other = store.next_case("bob", acquisition="random")
        for _ in range(3):  # 3 s of editing, a draft every 0.75 s: longer than one lease
            time.sleep(0.75)
            store.save_draft(taken.id, "alice", np.zeros((24, 32), bool))
        renewed = store.get_case(taken.id)
        conn = sql_connection(store)
        expires = conn.execute("SELECT lease_expires FROM cases WHERE id = ?", [taken.id]).fetchone()[0]
        conn.close()
        assert renewed.assigned_to == "alice" and expires > time.time() + 1.0
        assert store.next_case("bob", acquisition="random").id == other.id  # still bob's, never alice's case
        # An edit never takes a lease: a late draft of a case alice left keeps her on her new case,
        # and a draft on a case someone else holds leaves their lease.
        now_on = store.next_case("alice", acquisition="random", skip_case_id=taken.id)
        assert now_on.id not in (taken.id, other.id)
        store.save_draft(taken.id, "alice", np.zeros((24, 32), bool))
        assert store.get_case(now_on.id).assigned_to == "alice" and store.get_case(taken.id).assigned_to is None
        store.save_draft(now_on.id, "carol", np.zeros((24, 32), bool))
        assert store.get_case(now_on.id).assigned_to == "alice"
