"""The review queue: which unreviewed case an annotator gets next, and the leases that keep two apart.

Order: the case whose latest prediction scores highest on the chosen acquisition score (most
uncertain first; ``random`` is the baseline), cases without a score last, then the oldest.

Leases: serving or claiming a case leases it to the annotator for ``lease_seconds``; while the
lease is live nobody else is served it. An annotator holds one lease at a time (a new one clears
their others), and asking again re-serves their own. A save or a status change clears the lease.

Every function here takes the ``sqlite_utils.Database`` of an open write transaction
(``Connections.write()``), so the check and the lease it takes are one atomic step.
"""
from __future__ import annotations

from typing import Optional

from medclipseg.annotation.errors import StorageError

ACQUISITION_SCORES = {  # name shown in the UI -> column used to rank (descending)
    "foreground_entropy": "score_foreground_entropy",
    "boundary_entropy": "score_boundary_entropy",
    "mutual_information": "score_mutual_information",
    "image_entropy": "score_image_entropy",
    "random": "random_key",  # baseline
}
ACQUISITION_LABELS = {  # what the app's order menu shows for each
    "foreground_entropy": "Mean entropy on the predicted foreground",
    "boundary_entropy": "Mean entropy on the predicted boundary",
    "mutual_information": "Mutual information (model uncertainty)",
    "image_entropy": "Mean entropy over the whole image",
    "random": "Random order (baseline)",
}
NO_LEASE = {"assigned_to": None, "lease_expires": None}


def order_column(acquisition: str) -> str:
    """The column that ranks cases for `acquisition`, qualified for the queue query."""
    if acquisition not in ACQUISITION_SCORES:
        raise StorageError(f"Unknown case order {acquisition!r}; use one of {', '.join(ACQUISITION_SCORES)}.")
    column = ACQUISITION_SCORES[acquisition]
    return "c.random_key" if column == "random_key" else f"p.{column}"


def clear_leases(db, annotator: str) -> None:
    """Give back every case leased to `annotator` (normally one)."""
    for row in list(db["cases"].rows_where("assigned_to = ?", [annotator], select="id")):
        db["cases"].update(row["id"], NO_LEASE)


def lease(db, case_id: int, annotator: str, *, now: float, lease_seconds: float) -> None:
    clear_leases(db, annotator)
    db["cases"].update(int(case_id), {"assigned_to": annotator, "lease_expires": now + lease_seconds})


def next_case_id(db, annotator: str, *, acquisition: str, batch: Optional[str], now: float,
                 lease_seconds: float) -> Optional[int]:
    """Lease the next case to `annotator` and return its id; None when the queue has none for them."""
    order = order_column(acquisition)  # from the fixed ACQUISITION_SCORES table, never user input
    clear_leases(db, annotator)
    where_batch = "AND c.batch = :batch" if batch is not None else ""
    rows = list(db.query(
        "SELECT c.id FROM cases c JOIN predictions p "
        "ON p.id = (SELECT max(id) FROM predictions WHERE case_id = c.id) "
        "WHERE c.status = 'unreviewed' "
        "AND (c.assigned_to IS NULL OR c.lease_expires IS NULL OR c.lease_expires <= :now "
        "     OR c.assigned_to = :annotator) "
        f"{where_batch} ORDER BY {order} IS NULL, {order} DESC, c.id ASC LIMIT 1",
        {"annotator": annotator, "now": now, "batch": batch}))
    if not rows:
        return None
    case_id = int(rows[0]["id"])
    db["cases"].update(case_id, {"assigned_to": annotator, "lease_expires": now + lease_seconds})
    return case_id


def claim(db, case_id: int, annotator: str, *, now: float, lease_seconds: float) -> bool:
    """Lease `case_id` to `annotator`; False, and nothing changes, while another holds a live lease."""
    from sqlite_utils.db import NotFoundError

    try:
        row = db["cases"].get(int(case_id))
    except NotFoundError:
        raise StorageError(f"Case {case_id} does not exist in the annotation database.") from None
    holder, expires = row["assigned_to"], row["lease_expires"]
    if holder not in (None, annotator) and expires is not None and expires > now:
        return False
    lease(db, case_id, annotator, now=now, lease_seconds=lease_seconds)
    return True


def release(db, case_id: int, annotator: str) -> None:
    """Clear `annotator`'s lease on `case_id`; someone else's lease, or none, is left as it is."""
    for row in list(db["cases"].rows_where("id = ? AND assigned_to = ?", [int(case_id), annotator], select="id")):
        db["cases"].update(row["id"], NO_LEASE)
