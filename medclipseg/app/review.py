"""The page's review actions: submit a saved version, the reviewer's queue, open the next case to
review, approve (with or without an edit) or reject with a comment. Each returns a handlers.Screen;
the library does the work (medclipseg.annotation.review through the service)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from medclipseg.annotation.review import QUEUE_ORDERS
from medclipseg.annotation.service import AnnotationService
from medclipseg.annotation.store import VersionConflict
from medclipseg.app import handlers
from medclipseg.app.editor import read_edit
from medclipseg.app.handlers import USER_ERRORS, EditorSession, Screen, error_text

ORDER_LABELS = {"uncertainty": "Most uncertain first (the model's band entropy)",
                "disagreement": "Most disputed first (1 − mean pairwise Dice of the raters)"}
assert set(ORDER_LABELS) == set(QUEUE_ORDERS)


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def queue_markdown(service: AnnotationService, order: str = "uncertainty") -> str:
    """The submitted cases as a table, in the chosen order."""
    try:
        rows = service.review_queue(order or "uncertainty", limit=20)
        project = service.project_settings()
    except USER_ERRORS as exc:
        return error_text(exc)
    setting = (f"Review step **{'on' if project.review_required else 'off'}** (only approved labels train and "
               f"export when on) · **{project.raters_per_case}** rater(s) per case.")
    if not rows:
        return f"{setting}\n\nNo case waits for review."
    lines = [setting, "", f"**Waiting for review** ({len(rows)} shown, {ORDER_LABELS[order or 'uncertainty']})", "",
             "| Case | Version | Raters | Disagreement (1 − Dice) | Uncertainty | In review by |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| #{row['id']} {row['original_name']} | v{row['review_version']} | {row['rater_count']} | "
                     f"{_fmt(row['disagreement'])} | {_fmt(row['rank_band_entropy'])} | {row['assigned_to'] or '—'} |")
    return "\n".join(lines)


def submit(service: AnnotationService, session: Optional[EditorSession], annotator: Optional[str], *,
           may_submit_others: bool) -> Screen:
    """Submit the newest version the annotator saved of the open case."""
    if session is None:
        return Screen(status=error_text("Open a case and save it before submitting it for review."))
    try:
        version = service.submit_for_review(session.case_id, annotator=annotator, may_submit_others=may_submit_others)
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    return Screen(status=f"Case #{session.case_id} v{version} submitted for review.",
                  history=handlers.history_markdown(service, session.case_id))


def next_case_to_review(service: AnnotationService, order: str, reviewer: Optional[str], editor_value=None,
                        session: Optional[EditorSession] = None) -> Screen:
    """Open the first submitted case no other reviewer holds, showing the version under review."""
    try:
        view = service.next_review(reviewer, order=order or "uncertainty")
        if view is None:
            return Screen(status="No case waits for review.")
        screen = handlers.open_case(service, view.case.id, view.prediction_id, reviewer,
                                    **handlers._view_of(editor_value))
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    status = service.store.review_status(view.case.id)
    found = service.case_agreement(view.case.id)
    agreement = "" if found is None or len(found.raters) < 2 else (
        f" {len(found.raters)} raters, mean pairwise Dice {found.mean_pairwise:.3f}; against the STAPLE "
        "consensus: " + ", ".join(f"{rater} {value:.3f}" for rater, value in found.vs_consensus.items()) + ".")
    try:
        measured = service.uncertainty_vs_disagreement(view.case.id)
    except USER_ERRORS:
        measured = None
    if measured is not None and measured["pixel_auroc"] is not None:
        agreement += (f" The model's entropy finds the {measured['disputed_pixels']:,} disputed pixels with AUROC "
                      f"{measured['pixel_auroc']:.2f} (0.5: no better than chance).")
    screen.status = (f"Reviewing case #{view.case.id} (**{view.case.original_name}**), v{status['review_version']}."
                     f"{agreement} Approve it as shown, edit it and approve, or reject it with a comment.")
    return screen


def decide(service: AnnotationService, session: Optional[EditorSession], editor_value, reviewer: Optional[str], *,
           approve: bool, comment: str, own_allowed: bool = True) -> Screen:
    """Approve the version shown (an edit in the editor is saved as the next version and approved) or
    reject it with a comment. A version saved since the case was opened is a conflict: nothing is decided.
    ``own_allowed`` False (a reviewer's role): a version the reviewer saved is left to someone else."""
    if session is None:
        return Screen(status=error_text("Open a case to review first (Review tab: Review next)."))
    mask = None
    try:
        # The editor's mask (a volume's with its unsaved slices) is the reviewer's edit when it differs
        # from the version under review: saved as the next version of that rater's chain and approved.
        if session.is_volume:
            version, edited, edit = handlers.volume_edit_of(service, session, editor_value, reviewer)
        else:
            edit = read_edit(editor_value, case_id=session.case_id, shape=session.shape)
            version, edited = edit.base_version, edit.mask
        if version is None:
            return Screen(status=error_text(f"Case #{session.case_id} shows no saved version to review."))
        shown = service.store.load_mask(service.latest_correction(session.case_id, reviewer)["mask_path"])
        mask = None if np.array_equal(shown, edited) or not approve else edited
        decided = service.decide_review(session.case_id, reviewer=reviewer, version=version,
                                        decision="approve" if approve else "reject", comment=comment, mask=mask,
                                        own_allowed=own_allowed)
    except VersionConflict as conflict:
        if mask is None:  # nothing of the reviewer's to keep
            return Screen(status=error_text(f"Not decided: {conflict}"))
        return handlers.keep_edit_after_conflict(service, session, edit, reviewer, conflict, "Not decided.")
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    if session.is_volume:
        handlers.forget_volume_edit(service, session.case_id, reviewer)
    what = (f"approved v{decided['new_version']} (your edit of v{version})" if decided["new_version"]
            else f"{decided['decision']} v{version}")
    return Screen(status=f"Case #{session.case_id}: {what}.", history=handlers.history_markdown(service, session.case_id),
                  queue=handlers.queue_text(service))
