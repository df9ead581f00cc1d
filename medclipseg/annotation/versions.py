"""Model versions of an annotation database: which model serves, where each came from, how it scored.

``model_versions`` holds one row per model the database has served or trained; the id is the
model's content-hash id (``medclipseg.registry.LoadedModel.model_id``), so a row names exactly one
set of weights. ``base`` versions are the model the database started with (``path`` is its
``load_model`` source, e.g. ``demo``); ``trained`` versions live in ``<files>/models/<folder>/``,
written completely before their row is inserted, so a row always points at a whole model.

``meta.current_model_id`` names the promoted version; ``promotions`` logs every change of it
(who, when, why, and whether it was a rollback), which is what a rollback walks back along
(:func:`promotion_stack`). Every function takes the
``sql.Database`` of an open write transaction, except the readers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from medclipseg.annotation.errors import StorageError
from medclipseg.annotation.queue import copy_ranks

KINDS = ("base", "trained")


@dataclass(frozen=True)
class ModelVersion:
    id: str
    name: str
    parent_id: Optional[str]
    kind: str
    path: str
    recipe: dict
    correction_ids: list
    train_cases: Optional[int]
    gold_cases: Optional[int]
    gold_dsc: Optional[float]
    gold_nsd: Optional[float]
    gold_uncertainty_spearman: Optional[float]
    parent_gold_dsc: Optional[float]
    job_id: Optional[int]
    seconds: Optional[float]
    created_at: str
    created_by: str
    current: bool = False


def version_from_row(row: dict, current_id: Optional[str]) -> ModelVersion:
    return ModelVersion(
        id=row["id"], name=row["name"], parent_id=row["parent_id"], kind=row["kind"], path=row["path"],
        recipe=json.loads(row["recipe"] or "{}"), correction_ids=json.loads(row["correction_ids"] or "[]"),
        train_cases=row["train_cases"], gold_cases=row["gold_cases"], gold_dsc=row["gold_dsc"],
        gold_nsd=row["gold_nsd"], gold_uncertainty_spearman=row["gold_uncertainty_spearman"],
        parent_gold_dsc=row["parent_gold_dsc"], job_id=row["job_id"], seconds=row["seconds"],
        created_at=row["created_at"], created_by=row["created_by"], current=row["id"] == current_id)


def current_id(db) -> Optional[str]:
    rows = list(db["meta"].rows_where("key = 'current_model_id'", select="value"))
    return rows[0]["value"] if rows and rows[0]["value"] else None


def get(db, version_id: str) -> ModelVersion:
    rows = list(db["model_versions"].rows_where("id = ?", [str(version_id)]))
    if not rows:
        raise StorageError(f"There is no model version {version_id!r} in this annotation database; "
                           "`medclipseg models` lists them.")
    return version_from_row(rows[0], current_id(db))


def all_versions(db) -> list:
    current = current_id(db)
    return [version_from_row(row, current)
            for row in db["model_versions"].rows_where(order_by="seq, created_at, id")]


def insert(db, row: dict) -> None:
    """Add a version row (an existing id is the same weights: kept as it is)."""
    if row["kind"] not in KINDS:
        raise StorageError(f"Unknown model version kind {row['kind']!r}.")
    if list(db["model_versions"].rows_where("id = ?", [row["id"]], select="id")):
        return
    row = dict(row)
    row["recipe"] = json.dumps(row.get("recipe") or {})
    row["correction_ids"] = json.dumps(list(row.get("correction_ids") or []))
    # The order versions were added in (the caller's write transaction keeps two from taking one number).
    row["seq"] = int(db.query("SELECT coalesce(max(seq), 0) + 1 AS n FROM model_versions")[0]["n"])
    db["model_versions"].insert(row)


PROMOTION_KINDS = ("promote", "rollback")


def promote(db, version_id: str, *, by: str, reason: str, now: str, kind: str = "promote") -> Optional[str]:
    """Make `version_id` the current model; returns the previous one. Unreviewed cases keep a rank
    only where the new model already made their latest prediction; the rest wait to be re-scored."""
    if kind not in PROMOTION_KINDS:
        raise StorageError(f"Unknown promotion kind {kind!r}.")
    get(db, version_id)  # refuses an unknown id
    previous = current_id(db)
    if previous == version_id:
        return previous
    db["meta"].insert({"key": "current_model_id", "value": version_id}, replace=True)
    db["promotions"].insert({"version_id": version_id, "previous_id": previous, "promoted_by": by,
                             "reason": reason, "created_at": now, "kind": kind})
    db.execute("UPDATE cases SET ranked_prediction_id = (SELECT max(id) FROM predictions p "
               "WHERE p.case_id = cases.id AND p.model_id = ?) WHERE status = 'unreviewed'", [version_id])
    db.execute("UPDATE cases SET ranked_model_id = CASE WHEN ranked_prediction_id IS NULL THEN NULL ELSE ? END "
               "WHERE status = 'unreviewed'", [version_id])
    copy_ranks(db, "status = 'unreviewed'")
    return previous


def promotion_stack(db) -> list:
    """The versions a rollback walks back through, oldest first, the current one last.

    Replays the promotion log: a promotion puts its version on top; a rollback takes versions off
    until the one it went back to is on top. So after promoting A, B, C, rolling back twice gives
    B then A (never C again), and a promotion after a rollback starts a new branch from there."""
    stack: list = []
    for row in db.query("SELECT version_id, previous_id, kind FROM promotions ORDER BY id"):
        if not stack and row["previous_id"]:
            stack.append(row["previous_id"])
        if row["kind"] == "rollback":
            while stack and stack[-1] != row["version_id"]:
                stack.pop()
            if not stack:
                stack.append(row["version_id"])
        else:
            stack.append(row["version_id"])
    current = current_id(db)
    if current is not None and (not stack or stack[-1] != current):
        stack.append(current)  # a current model set without a log row (never by this module)
    return stack


def rollback_target(db) -> Optional[str]:
    """The version a rollback makes current: the one promoted before the current one, walking back
    through earlier rollbacks (None when there is none)."""
    stack = promotion_stack(db)
    return stack[-2] if len(stack) >= 2 else None


def promotion_log(db) -> list:
    return list(db["promotions"].rows_where(order_by="id"))
