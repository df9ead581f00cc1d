"""The review queue: which unreviewed case an annotator gets next, and the leases that keep two apart.

Order: the case whose latest prediction by the current model ranks highest on the chosen
acquisition (most uncertain or most likely missed first; ``random`` and ``random_foreground`` are
the baselines), cases not yet ranked by the current model last, then the oldest. The ranks are
columns of ``cases`` (see medclipseg.annotation.schema), so serving the top is an index lookup.

A case a reviewer rejected goes back to the annotator whose version it was: their next case is
that one (oldest first) before anything new. With several raters per case
(medclipseg.annotation.review), a case is never served to an annotator who labelled it already
or declined it (a skip by one of several raters).

Leases: serving or claiming a case leases it to the annotator for ``lease_seconds``; while the
lease is live nobody else is served it. An annotator holds one lease at a time (a new one clears
their others), and asking again re-serves their own. Editing renews it (every draft the editor
writes calls :func:`renew`), so a case being corrected for longer than a lease is not served to
anyone else; an edit never takes a lease the annotator does not hold. A save or a status change clears the lease.

Every function here takes the ``sql.Database`` of an open write transaction
(``Connections.write()``, or ``Connections.claim()`` for the claims), so the check and the lease it takes are one atomic step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional

from medclipseg.annotation import diversity, review
from medclipseg.annotation.errors import StorageError

@dataclass(frozen=True)
class Acquisition:
    """One way to order the queue: rank cases by ``column`` (descending, NULL last)."""

    column: str                # cases column holding the rank
    score_key: Optional[str]   # the Prediction.scores key copied into it; None: not made by the model
    label: str                 # what the app's order menu shows
    diverse: bool = False      # serve the top cases unlike those already taken (annotation.diversity)


# The first entry is the default order; docs/study.md gives the study that chose it.
ACQUISITIONS = {
    "random_diverse": Acquisition("random_key", None, "Random, unlike the cases already taken (diverse)",
                                  diverse=True),
    "band_entropy_diverse": Acquisition("rank_band_entropy", "band_entropy",
                                        "Band entropy, unlike the cases already taken (diverse)", diverse=True),
    "band_entropy": Acquisition("rank_band_entropy", "band_entropy",
                                "Mean entropy on the foreground, the soft foreground and the band around them"),
    "expected_dice_miss": Acquisition("rank_expected_dice_miss", "expected_dice_miss",
                                      "Likely misses first (1 - expected Dice from the samples)"),
    "top_entropy": Acquisition("rank_top_entropy", "top_entropy", "Mean entropy of the 1 % most uncertain pixels"),
    "band_mutual_information": Acquisition("rank_band_mutual_information", "band_mutual_information",
                                           "Mutual information on the foreground and its band"),
    "foreground_entropy": Acquisition("rank_foreground_entropy", "mean_entropy_foreground",
                                      "Mean entropy on the predicted foreground"),
    "boundary_entropy": Acquisition("rank_boundary_entropy", "mean_entropy_boundary",
                                    "Mean entropy on the predicted boundary"),
    "mutual_information": Acquisition("rank_mutual_information", "mean_mutual_information",
                                      "Mutual information (model uncertainty)"),
    "image_entropy": Acquisition("rank_image_entropy", "mean_entropy", "Mean entropy over the whole image"),
    "random_foreground": Acquisition("rank_random_foreground", None,
                                     "Random, cases whose prompt names a present target first (baseline)"),
    "random": Acquisition("random_key", None, "Random order (baseline)"),
}
DEFAULT_ACQUISITION = next(iter(ACQUISITIONS))
# The model's image-level uncertainty, where a score is needed whatever the queue's order is (the
# gold split's uncertainty Spearman, the stop signal's "top of the queue"): random keys are none.
UNCERTAINTY_ORDER = "band_entropy"
ACQUISITION_SCORES = {name: a.column for name, a in ACQUISITIONS.items()}  # name -> cases column
ACQUISITION_LABELS = {name: a.label for name, a in ACQUISITIONS.items()}
# cases rank column -> Prediction.scores key, for the orders the model's scores make.
RANKED_BY_MODEL = {a.column: a.score_key for a in ACQUISITIONS.values() if a.score_key}


def rank_random_foreground(prompt: str, random_key: float) -> float:
    """Foreground-aware random: a prompt that names a present target ranks above every prompt that
    states absence ("No putamen in ..."), in random order within each group."""
    from medclipseg.io.prompts import states_absence

    return float(random_key) + (0.0 if states_absence(prompt) else 1.0)


def copy_ranks(db, where: str = "1 = 1", columns: Optional[dict] = None) -> None:
    """Fill the rank columns (``{column: score key}``, all by default) of the cases matching `where`
    from the scores of their ``ranked_prediction_id`` (NULL where there is none); used by promotions
    and when a new acquisition's column is added."""
    for column, key in (RANKED_BY_MODEL if columns is None else columns).items():
        db.execute(f'UPDATE cases SET "{column}" = (SELECT {db.json_number("scores", key)} FROM predictions '
                   f"WHERE id = cases.ranked_prediction_id) WHERE {where}")


def rank_values(scores: dict) -> dict:
    """The rank columns a prediction with these scores gives its case (non-finite scores -> NULL)."""
    values = {}
    for column, key in RANKED_BY_MODEL.items():
        try:
            value = float(scores.get(key))
        except (TypeError, ValueError):
            value = None
        values[column] = value if value is not None and math.isfinite(value) else None
    return values


NO_LEASE = {"assigned_to": None, "lease_expires": None}
# How often a PostgreSQL claim asks again when every free case it saw was taken meanwhile.
CLAIM_RETRIES = 20


def order_column(acquisition: str) -> str:
    """The cases column that ranks the queue for `acquisition`."""
    if acquisition not in ACQUISITION_SCORES:
        raise StorageError(f"Unknown case order {acquisition!r}; use one of {', '.join(ACQUISITION_SCORES)}.")
    return ACQUISITION_SCORES[acquisition]


def clear_leases(db, annotator: str) -> None:
    """Give back every case leased to `annotator` (normally one)."""
    for row in list(db["cases"].rows_where("assigned_to = ?", [annotator], select="id")):
        db["cases"].update(row["id"], NO_LEASE)


def lease(db, case_id: int, annotator: str, *, now: float, lease_seconds: float) -> None:
    clear_leases(db, annotator)
    db["cases"].update(int(case_id), {"assigned_to": annotator, "lease_expires": now + lease_seconds})


def next_case_id(db, annotator: str, *, acquisition: str, batch: Optional[str], now: float,
                 lease_seconds: float, skip_case_id: Optional[int] = None) -> Optional[int]:
    """Lease the next case to `annotator` and return its id; None when the queue has none for them.
    ``skip_case_id``: a case not to serve (the one on the annotator's screen: *Next* means another)."""
    order = order_column(acquisition)  # from the fixed ACQUISITION_SCORES table, never user input
    diverse = ACQUISITIONS[acquisition].diverse
    clear_leases(db, annotator)
    returned = _returned_case_id(db, annotator, now=now, skip_case_id=skip_case_id)
    if returned is not None:  # a reviewer rejected this annotator's version: theirs to fix first
        db["cases"].update(returned, {"assigned_to": annotator, "lease_expires": now + lease_seconds})
        return returned
    where_batch = "AND c.batch = :batch" if batch is not None else ""
    # Several raters per case: never a case this annotator has already labelled.
    several = review.project_settings(db).raters_per_case > 1
    not_rated = ("AND NOT EXISTS (SELECT 1 FROM corrections k WHERE k.case_id = c.id AND k.annotator = :annotator) "
                 "AND NOT EXISTS (SELECT 1 FROM declines d WHERE d.case_id = c.id AND d.annotator = :annotator) "
                 if several else "")
    columns = (f'c.id, c.prompt, c.descriptor, c.source_key, c.slice_index, c."{order}" AS score' if diverse
               else "c.id")
    # Walks the partial index idx_queue_<column> from its top (NULL ranks sort last in DESC order),
    # skipping live leases of others and cases that have no prediction to show. On PostgreSQL the
    # rows are locked as they are taken and rows another claim or a writer holds are passed over.
    ordered = f'c."{order}"'
    query = (
        f'SELECT {columns} FROM cases c {db.indexed_by(f"idx_queue_{order}")} '
        "WHERE c.status = 'unreviewed' "
        "AND (c.assigned_to IS NULL OR c.lease_expires IS NULL OR c.lease_expires <= :now "
        "     OR c.assigned_to = :annotator) "
        "AND EXISTS (SELECT 1 FROM predictions p WHERE p.case_id = c.id) " + not_rated
        + ("AND c.id != :skip " if skip_case_id is not None else "") +
        f'{where_batch} ORDER BY {db.desc_nulls_last(ordered)}, c.id ASC LIMIT :limit')
    params = {"annotator": annotator, "now": now, "batch": batch, "limit": diversity.CANDIDATES if diverse else 1,
              "skip": skip_case_id}
    rows = list(db.query(query + db.skip_locked("c"), params))
    # PostgreSQL re-checks a locked row against its newest version and drops it when it no longer
    # matches (another claim took it and committed), so LIMIT may come back short, even empty,
    # while other cases are free: ask again while the unlocked query still sees any.
    for _ in range(CLAIM_RETRIES if db.dialect == "postgresql" else 0):
        if rows or not db.query(query, {**params, "limit": 1}):
            break
        time.sleep(0.002)
        rows = list(db.query(query + db.skip_locked("c"), params))
    if not rows:
        return None
    if diverse:
        candidates = [_queue_case(row) for row in rows]
        case_id = candidates[diversity.pick(candidates, taken_cases(db, annotator, now=now))].id
    else:
        case_id = int(rows[0]["id"])
    db["cases"].update(case_id, {"assigned_to": annotator, "lease_expires": now + lease_seconds})
    return case_id


def _returned_case_id(db, annotator: str, *, now: float, skip_case_id: Optional[int]) -> Optional[int]:
    """The oldest case whose reviewed version (saved by `annotator`) a reviewer rejected, and that
    nobody else holds; None when there is none."""
    rows = list(db.query(
        f"SELECT c.id FROM cases c {db.indexed_by('idx_cases_review')} JOIN corrections k "
        "ON k.case_id = c.id AND k.version = c.review_version "
        "WHERE c.review_state = 'rejected' AND k.annotator = :annotator "
        "AND (c.assigned_to IS NULL OR c.assigned_to = :annotator OR c.lease_expires IS NULL "
        "     OR c.lease_expires <= :now) AND c.id != :skip ORDER BY c.updated_at, c.id LIMIT 1" + db.skip_locked("c"),
        {"annotator": annotator, "now": now, "skip": -1 if skip_case_id is None else int(skip_case_id)}))
    return int(rows[0]["id"]) if rows else None


_CASE_FIELDS = "c.id, c.prompt, c.descriptor, c.source_key, c.slice_index"


def _queue_case(row: dict) -> "diversity.QueueCase":
    return diversity.QueueCase(id=int(row["id"]), prompt=row["prompt"], descriptor=row["descriptor"],
                               source_key=row["source_key"], slice_index=row["slice_index"],
                               score=row.get("score"))


def taken_cases(db, annotator: str, *, now: float) -> list:
    """The cases a diverse order keeps away from: the latest labelled ones (corrected or accepted,
    ``diversity.ROUND_CONTEXT`` of them, newest versions first) and those leased to others now."""
    labelled = db.query(
        f"SELECT DISTINCT {_CASE_FIELDS} FROM (SELECT case_id FROM corrections ORDER BY id DESC LIMIT :n) r "
        "JOIN cases c ON c.id = r.case_id", {"n": diversity.ROUND_CONTEXT})
    leased = db.query(
        f"SELECT {_CASE_FIELDS} FROM cases c {db.indexed_by('idx_cases_assigned')} "
        "WHERE c.assigned_to IS NOT NULL AND c.assigned_to != :annotator AND c.lease_expires > :now",
        {"annotator": annotator, "now": now})
    seen, taken = set(), []
    for row in (*labelled, *leased):
        if row["id"] not in seen:
            seen.add(row["id"])
            taken.append(_queue_case(row))
    return taken


def ensure_rank_columns(db) -> None:
    """Give the cases table a rank column and queue index for every acquisition the model scores,
    filled from the stored predictions' scores: adding an acquisition needs no migration."""
    existing = {column.name for column in db["cases"].columns}
    for column, key in RANKED_BY_MODEL.items():
        if column in existing:
            continue
        db["cases"].add_column(column, float)
        quoted = f'"{column}"'
        db.execute(f'CREATE INDEX "idx_queue_{column}" ON cases ({db.desc_nulls_last(quoted)}, id) '
                   "WHERE status = 'unreviewed'")
        copy_ranks(db, columns={column: key})


def claim(db, case_id: int, annotator: str, *, now: float, lease_seconds: float) -> bool:
    """Lease `case_id` to `annotator`; False, and nothing changes, while another holds a live lease."""
    from medclipseg.annotation.sql import RowNotFound

    try:
        row = db["cases"].get(int(case_id))
    except RowNotFound:
        raise StorageError(f"Case {case_id} does not exist in the annotation database.") from None
    holder, expires = row["assigned_to"], row["lease_expires"]
    if holder not in (None, annotator) and expires is not None and expires > now:
        return False
    lease(db, case_id, annotator, now=now, lease_seconds=lease_seconds)
    return True


def renew(db, case_id: int, annotator: str, *, now: float, lease_seconds: float) -> bool:
    """Editing keeps a case: `annotator`'s lease on it runs ``lease_seconds`` from now again. Only a
    lease they hold is renewed: an edit never takes a case (a late draft of a case they have left
    must not move their lease away from the case they work on now). True when renewed."""
    rows = list(db["cases"].rows_where("id = ? AND assigned_to = ?", [int(case_id), annotator], select="id"))
    if not rows:
        return False
    db["cases"].update(int(case_id), {"lease_expires": now + lease_seconds})
    return True


def release(db, case_id: int, annotator: str) -> None:
    """Clear `annotator`'s lease on `case_id`; someone else's lease, or none, is left as it is."""
    for row in list(db["cases"].rows_where("id = ? AND assigned_to = ?", [int(case_id), annotator], select="id")):
        db["cases"].update(row["id"], NO_LEASE)
