"""The review step and several raters per case, as rows of the annotation database (schema 8).

Project settings (``meta``): ``review_required`` (only approved labels train and export) and
``raters_per_case`` k (1 by default). With k > 1 a case is served to k different annotators, one
at a time and never twice to one; each has their own chain of versions (``corrections.rater``),
and the case leaves the queue once k raters saved. With k = 1 a case has one chain (rater NULL),
as before, and whoever opens it continues that chain.

Review: the annotator submits a saved version (``submit``); with k > 1 a case is submitted by
itself once its k-th rater saves and review is on. A reviewer takes the submitted cases, most
uncertain or most disputed first (``queue_rows``), and approves or rejects a version with a
comment (``decide``); an edit by the reviewer is a new version in the same chain, approved at
once. A decision names the version it saw: one saved since is a conflict, as for a save. A
rejected case goes back to its annotator first (medclipseg.annotation.queue). ``reviews`` logs
every submission and decision.

Every function takes the ``sql.Database`` of an open write transaction, except readers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from medclipseg.annotation.errors import StorageError

ACTIONS = ("submitted", "approved", "rejected")
MAX_RATERS = 10
QUEUE_ORDERS = ("uncertainty", "disagreement")


@dataclass(frozen=True)
class ProjectSettings:
    review_required: bool
    raters_per_case: int


def _meta(db, key: str) -> Optional[str]:
    rows = list(db["meta"].rows_where("key = ?", [key], select="value"))
    return rows[0]["value"] if rows else None


def project_settings(db) -> ProjectSettings:
    return ProjectSettings(review_required=(_meta(db, "review_required") or "0") == "1",
                           raters_per_case=int(_meta(db, "raters_per_case") or 1))


def set_project_settings(db, *, review_required: Optional[bool] = None, raters_per_case: Optional[int] = None) -> None:
    if review_required is not None:
        if not isinstance(review_required, bool):
            raise StorageError("review_required must be true or false.")
        db["meta"].insert({"key": "review_required", "value": "1" if review_required else "0"}, replace=True)
    if raters_per_case is not None:
        if isinstance(raters_per_case, bool) or not isinstance(raters_per_case, int) \
                or not 1 <= raters_per_case <= MAX_RATERS:
            raise StorageError(f"The number of raters per case must be a whole number from 1 to {MAX_RATERS}, "
                               f"not {raters_per_case!r}.")
        db["meta"].insert({"key": "raters_per_case", "value": str(int(raters_per_case))}, replace=True)


def chain_of(annotator: str, raters_per_case: int) -> Optional[str]:
    """The chain a save by `annotator` continues: theirs with several raters, the case's one otherwise."""
    return annotator if raters_per_case > 1 else None


def save_chain(db, case: dict, annotator: str, raters_per_case: int, *, for_rater: Optional[str] = None,
               others_allowed: bool = True) -> Optional[str]:
    """The chain a save continues. With several raters: the saver's own while they have one or the
    case still lacks raters; once all k raters are in, a reviewer's (or admin's) edit continues the
    chain under review, and anyone else is refused in words (a case never gets a k+1-th rater)."""
    if for_rater is not None or raters_per_case <= 1:
        return for_rater if for_rater is not None else chain_of(annotator, raters_per_case)
    case_id = int(case["id"])
    if latest_in_chain(db, case_id, annotator) is not None or rater_count(db, case_id) < raters_per_case:
        return annotator
    if others_allowed and case.get("review_version") is not None:
        rows = list(db["corrections"].rows_where("case_id = ? AND version = ?", [case_id, int(case["review_version"])],
                                                 select="rater", limit=1))
        if rows:
            return rows[0]["rater"]
    raise StorageError(f"Case #{case_id} already has the labels of its {raters_per_case} raters; a case is "
                       "labelled by that many people, no more. Nothing was saved.")


def latest_in_chain(db, case_id: int, rater: Optional[str]) -> Optional[dict]:
    """version, annotator, created_at of the newest version of one chain (rater None: the case's one chain)."""
    where, params = ("case_id = ? AND rater IS NULL", [int(case_id)]) if rater is None else \
        ("case_id = ? AND rater = ?", [int(case_id), rater])
    rows = list(db["corrections"].rows_where(where, params, select="version, annotator, created_at, status, rater",
                                             order_by="version DESC", limit=1))
    return rows[0] if rows else None


def rater_count(db, case_id: int) -> int:
    """Raters who saved a version of the case (the one chain of k = 1 counts as one)."""
    row = next(iter(db.query(
        "SELECT count(DISTINCT rater) AS named, max(CASE WHEN rater IS NULL THEN 1 ELSE 0 END) AS unnamed FROM corrections WHERE case_id = ?",
        [int(case_id)])))
    return int(row["named"] or 0) + int(row["unnamed"] or 0)


def latest_by_rater(db, case_id: int) -> list:
    """The newest version of each chain of the case: rows with version, rater, annotator, mask_path, status."""
    return list(db.query(
        "SELECT k.id, k.version, k.rater, k.annotator, k.mask_path, k.status, k.created_at FROM corrections k "
        "WHERE k.case_id = :case AND k.version = (SELECT max(l.version) FROM corrections l "
        "WHERE l.case_id = k.case_id AND (l.rater = k.rater OR (l.rater IS NULL AND k.rater IS NULL))) "
        "ORDER BY k.version", {"case": int(case_id)}))


def log(db, case_id: int, *, action: str, by: str, version: Optional[int], comment: str = "",
        new_version: Optional[int] = None, now: str) -> None:
    if action not in ACTIONS:
        raise StorageError(f"Unknown review action {action!r}.")
    db["reviews"].insert({"case_id": int(case_id), "version": version, "action": action, "by": by,
                          "comment": comment or "", "new_version": new_version, "created_at": now})


def submit(db, case_id: int, *, by: str, version: int, may_submit_others: bool, now: str) -> None:
    """Put a saved version up for review; refused for a version that is not its chain's newest, or
    (``may_submit_others`` False) one someone else saved."""
    rows = list(db["corrections"].rows_where("case_id = ? AND version = ?", [int(case_id), int(version)],
                                             select="version, annotator, rater", limit=1))
    if not rows:
        raise StorageError(f"Case #{case_id} has no version v{version} to submit for review.")
    row = rows[0]
    newest = latest_in_chain(db, case_id, row["rater"])
    if int(newest["version"]) != int(version):
        raise StorageError(f"Case #{case_id}: v{version} is not the newest version of its chain (v{newest['version']} "
                           f"by {newest['annotator']} is); submit that one. Nothing was changed.")
    if not may_submit_others and row["annotator"] != by:
        raise StorageError(f"Case #{case_id}: v{version} was saved by {row['annotator']}; only they, a reviewer or an "
                           "admin may submit it for review. Nothing was changed.")
    db["cases"].update(int(case_id), {"review_state": "submitted", "review_version": int(version), "updated_at": now})
    log(db, case_id, action="submitted", by=by, version=int(version), now=now)


def checked_decision(case: dict, *, approve: bool, comment: Optional[str]) -> str:
    """The cleaned comment of a decision on `case` (a cases row), or StorageError in words: a case
    never submitted, a rejection without a reason, a comment past 2,000 characters. Checked before
    anything is written (a reviewer's edit included) and again in the deciding transaction."""
    if case["review_state"] is None:
        raise StorageError(f"Case #{case['id']} has not been submitted for review. Nothing was changed.")
    comment = (comment or "").strip()
    if not approve and not comment:
        raise StorageError("Say why in a comment when rejecting: the annotator reads it. Nothing was changed.")
    if len(comment) > 2000:
        raise StorageError("A review comment may be at most 2,000 characters. Nothing was changed.")
    return comment


def decide(db, case_id: int, *, reviewer: str, version: int, approve: bool, comment: str,
           new_version: Optional[int], now: str) -> None:
    """Approve or reject `version` of a submitted (or earlier decided) case. The caller has checked
    that `version` is still its chain's newest (a conflict otherwise)."""
    comment = checked_decision(db["cases"].get(int(case_id)), approve=approve, comment=comment)
    decided = int(new_version if new_version is not None else version)
    db["cases"].update(int(case_id), {"review_state": "approved" if approve else "rejected",
                                      "review_version": decided, "updated_at": now, "assigned_to": None,
                                      "lease_expires": None})
    log(db, case_id, action="approved" if approve else "rejected", by=reviewer, version=int(version),
        comment=comment, new_version=new_version, now=now)


def approved_versions(db) -> dict:
    """{case id: the newest approved version} (for training and export when review is required)."""
    rows = db.query("SELECT case_id, max(coalesce(new_version, version)) AS version FROM reviews "
                    "WHERE action = 'approved' GROUP BY case_id")
    return {int(row["case_id"]): int(row["version"]) for row in rows}


def history(db, case_id: int) -> list:
    return list(db["reviews"].rows_where("case_id = ?", [int(case_id)], order_by="id"))


def queue_rows(db, *, order: str = "uncertainty", limit: int = 50) -> list:
    """Submitted cases for a reviewer: most disputed first (``disagreement``: 1 - mean pairwise Dice
    of the raters), or most uncertain first (``uncertainty``: the current model's band entropy)."""
    if order not in QUEUE_ORDERS:
        raise StorageError(f"Unknown review order {order!r}; use one of {', '.join(QUEUE_ORDERS)}.")
    column = "disagreement" if order == "disagreement" else "rank_band_entropy"
    return list(db.query(
        f"SELECT id, prompt, original_name, kind, review_version, rater_count, disagreement, rank_band_entropy, "
        f"assigned_to, lease_expires FROM cases WHERE review_state = 'submitted' "
        f"ORDER BY {column} IS NULL, {column} DESC, id LIMIT :limit", {"limit": int(limit)}))
