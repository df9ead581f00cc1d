"""Drafts: the in-progress mask of one annotator on one case, kept so a browser reload restores it.

One row per (case, annotator) in the ``drafts`` table (schema version 3), overwritten in place;
``revision`` counts the saves of that row. The mask is a PNG in the file store like correction
masks. These functions run inside the store's write transaction; the store writes the new PNG
before the row and removes the replaced one only after the commit, so a failed save leaves the
previous draft and its file as they were.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import numpy as np


# eq=False: the mask is an array, so field-wise equality and hashing would be ambiguous.
@dataclass(frozen=True, eq=False)
class Draft:
    case_id: int
    annotator: str
    prediction_id: Optional[int]
    base_version: Optional[int]
    threshold: Optional[float]
    pixels: int
    revision: int
    updated_at: str
    mask: np.ndarray  # bool H x W
    reviewed_slices: tuple = ()  # a volume's slices the annotator has looked at (display indices)
    slice_provenance: Optional[dict] = None  # a volume's {"drawn": [...], ...} (volume_tools.provenance_record)


def get_row(db, case_id: int, annotator: str) -> Optional[dict]:
    rows = list(db["drafts"].rows_where("case_id = ? AND annotator = ?", [int(case_id), annotator], limit=1))
    return rows[0] if rows else None


def write_row(db, row: dict, existing: Optional[dict]) -> dict:
    """Insert the draft row, or overwrite ``existing`` with it and one more revision; returns the stored row."""
    row = dict(row, revision=1 if existing is None else int(existing["revision"]) + 1)
    if existing is None:
        db["drafts"].insert(row)
    else:
        db["drafts"].update(existing["id"], row)
    return row


def delete_row(db, case_id: int, annotator: str) -> Optional[str]:
    """Delete the draft row; returns its mask path (for removal after the commit), None when there was none."""
    existing = get_row(db, case_id, annotator)
    if existing is None:
        return None
    db["drafts"].delete(existing["id"])
    return existing["mask_path"]


def from_row(row: dict, mask: np.ndarray) -> Draft:
    return Draft(case_id=int(row["case_id"]), annotator=row["annotator"], prediction_id=row["prediction_id"],
                 base_version=row["base_version"], threshold=row["threshold"], pixels=int(row["pixels"]),
                 revision=int(row["revision"]), updated_at=row["updated_at"], mask=mask,
                 reviewed_slices=tuple(json.loads(row.get("reviewed_slices") or "[]")),
                 slice_provenance=json.loads(row["slice_provenance"]) if row.get("slice_provenance") else None)
