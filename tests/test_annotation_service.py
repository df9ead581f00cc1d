"""`medclipseg.annotation.service.AnnotationService`: following the current model version, background
re-scoring that survives a failing case, and skipping (leases, saved work, un-skip).

Predictions come from a stub predictor (no model run) except where a real model folder is needed.
"""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from annotation_support import sql_connection, image
from app_support import prediction_from_probability
from medclipseg.annotation.scratch import ScratchSpace
from medclipseg.annotation.service import AnnotationService, ConfirmationNeeded, RequestError

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (24, 32)


def _disk(radius: float, shape=SHAPE) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 <= radius ** 2


def _probability(shape) -> np.ndarray:
    return np.where(_disk(min(shape) / 4, shape), 0.8, 0.1).astype(np.float32)


class StubPredictor:
    """Records the prompts it is asked to predict; raises for the prompts in ``fail_on``."""

    def __init__(self, model_id: str, fail_on=()):
        self.model_id = model_id
        self.source = "stub"
        self.fail_on = set(fail_on)
        self.calls = []

    def predict(self, image, prompt, *, num_samples=2, threshold=0.5, seed=None, channel_order="rgb", **_):
        self.calls.append(prompt)
        if prompt in self.fail_on:
            raise RuntimeError("CUDA out of memory (simulated)")
        shape = np.asarray(image).shape[:2]
        return prediction_from_probability(_probability(shape), model_id=self.model_id, prompt=prompt,
                                           threshold=threshold)


def new_service(store, predictor, tmp_path) -> AnnotationService:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return AnnotationService(store, predictor, num_samples=2, scratch=ScratchSpace(parent=scratch))


def _case(store, seed: int, *, model_id: str):
    case = store.add_case(image(seed, SHAPE), prompt=f"lesion {seed}", original_name=f"{seed}.png")
    store.add_prediction(case.id, prediction_from_probability(_probability(SHAPE), model_id=model_id,
                                                              prompt=f"lesion {seed}"))
    return case.id


def _within(seconds: float, function):
    """function() in a thread; fails (instead of hanging the run) when it does not return in time."""
    result, errors = [], []
    thread = threading.Thread(target=lambda: _capture(function, result, errors), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not return within {seconds} s"
    if errors:
        raise errors[0]
    return result[0]


def _capture(function, result, errors):
    try:
        result.append(function())
    except BaseException as exc:  # re-raised in the test's thread
        errors.append(exc)


def _image_file(store, case_id: int) -> Path:
    connection = sql_connection(store)
    try:
        (relative,) = connection.execute("SELECT image_path FROM cases WHERE id = ?", (case_id,)).fetchone()
    finally:
        connection.close()
    return store.files_dir / relative


# ------------------------------------------------------------------------------ following the current version


def _nudge_weights(folder: Path, amount: float) -> None:
    """Change one weight of a model folder (it still loads; its content hash changes)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = folder / "model.safetensors"
    with safe_open(str(path), "np") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    scale = tensors["logit_scale"]
    tensors["logit_scale"] = np.array(scale + amount, dtype=scale.dtype).reshape(scale.shape)
    save_file(tensors, str(path), metadata=metadata)


def test_a_version_whose_files_changed_is_not_served_and_not_reloaded(store, tmp_path, monkeypatch):
    """A promoted version whose folder no longer hashes to its id is refused once, in words; the
    service keeps serving the model it had instead of swapping in (and reloading) other weights."""
    from medclipseg.inference.predictor import Predictor
    from medclipseg.registry import load_model

    demo = Predictor.from_pretrained("demo", device="cpu")
    service = new_service(store, demo, tmp_path)
    base = demo.model_id
    assert store.current_model_id() == base

    folder = store.models_dir / "retrained"
    shutil.copytree(ROOT / "assets" / "demo-tiny", folder)
    _nudge_weights(folder, 0.25)                       # a trained version: other weights than the demo's
    version_id = load_model(str(folder), device="cpu").model_id
    assert version_id != base
    store.add_trained_version(folder, model_id=version_id, name="retrained", parent_id=base, created_by="alice",
                              recipe={}, correction_ids=[], train_cases=1)
    _nudge_weights(folder, 0.5)                        # altered after registration: it now hashes otherwise
    store.promote(version_id, by="alice")

    loads = []
    original = service._load
    monkeypatch.setattr(service, "_load", lambda source: loads.append(source) or original(source))
    for _ in range(3):
        assert service.model_id == base               # still the model it served
    assert loads == [str(folder)]                      # tried once, not on every request
    assert version_id in service.model_warning and base in service.model_warning
    # Background re-scoring does not spin on a model that can never rank the queue.
    case = store.add_case(image(3, SHAPE), prompt="lesion 3", original_name="3.png")
    store.add_prediction(case.id, prediction_from_probability(_probability(SHAPE), model_id=base,
                                                              prompt="lesion 3"))
    assert _within(60, lambda: service.rescore_pending(num_samples=1)) == 0
    service.close()


# ------------------------------------------------------------------------------ background re-scoring


def test_a_failing_case_does_not_stop_rescoring_and_is_not_retried_by_the_same_model(store, tmp_path,
                                                                                      monkeypatch):
    store.ensure_base_version("stub@1", source="stub", name="stub")
    ids = [_case(store, seed, model_id="old@0") for seed in range(4)]   # ranked by no current model
    assert store.cases_to_rescore("stub@1") == ids
    _image_file(store, ids[1]).unlink()                                   # its image file is gone
    first = StubPredictor("stub@1", fail_on={"lesion 2"})                 # the model fails on this one
    service = new_service(store, first, tmp_path)
    reads = []
    load_image = store.load_image
    monkeypatch.setattr(store, "load_image", lambda case_id: reads.append(case_id) or load_image(case_id))

    assert _within(60, service.rescore_pending) == 2                     # the other two, then it returns
    assert first.calls == ["lesion 0", "lesion 2", "lesion 3"]
    assert store.cases_to_rescore("stub@1") == [ids[1], ids[2]]          # the failed ones still wait
    for case_id in (ids[0], ids[3]):
        assert store.load_prediction(store.latest_prediction_id(case_id)).model_id == "stub@1"
    assert f"case {ids[1]}" in service.rescore_error and f"case {ids[2]}" in service.rescore_error
    assert "CUDA out of memory" in service.rescore_error

    # The same model does not try them again in this process.
    reads.clear()
    assert _within(60, service.rescore_pending) == 0
    assert reads == [] and first.calls == ["lesion 0", "lesion 2", "lesion 3"]

    # Another version promoted: it tries them again (the model failure was the old model's).
    second = StubPredictor("stub@2")
    store.add_base_version("stub@2", source="stub2", name="stub")
    store.promote("stub@2", by="alice")
    monkeypatch.setattr(service, "_load", lambda source: second)
    assert _within(60, service.rescore_pending) == 3                     # 0, 2 and 3; 1 has no image
    assert second.calls == ["lesion 0", "lesion 2", "lesion 3"]
    assert ids[1] in reads and store.cases_to_rescore("stub@2") == [ids[1]]
    assert "stub@2" in service.rescore_error and f"case {ids[1]}" in service.rescore_error
    assert f"case {ids[2]}" not in service.rescore_error       # the old model's failure no longer applies
    service.close()


# ------------------------------------------------------------------------------ skip and un-skip


def test_skip_is_refused_while_another_annotator_holds_the_case(store, tmp_path):
    store.ensure_base_version("stub@1", source="stub", name="stub")
    service = new_service(store, StubPredictor("stub@1"), tmp_path)
    case_id = _case(store, 1, model_id="stub@1")
    assert store.claim(case_id, annotator="bob")
    with pytest.raises(RequestError, match="bob") as refused:
        service.skip(case_id, annotator="alice")
    assert not isinstance(refused.value, ConfirmationNeeded)
    case = store.get_case(case_id)
    assert (case.status, case.assigned_to) == ("unreviewed", "bob")
    service.skip(case_id, annotator="bob")              # the lease holder may
    case = store.get_case(case_id)
    assert (case.status, case.assigned_to) == ("skipped", None)
    service.unskip(case_id, annotator="carol")
    assert store.get_case(case_id).status == "unreviewed"
    assert store.next_case("dave").id == case_id        # back in the queue
    service.close()


def test_skipping_saved_work_needs_a_confirmation_and_unskip_restores_it(store, tmp_path):
    store.ensure_base_version("stub@1", source="stub", name="stub")
    service = new_service(store, StubPredictor("stub@1"), tmp_path)
    corrected, accepted = _case(store, 1, model_id="stub@1"), _case(store, 2, model_id="stub@1")
    store.save_correction(corrected, _disk(3), annotator="dave")
    store.save_correction(accepted, _disk(5), annotator="dave")
    store.save_correction(accepted, None, annotator="erin", status="accepted")     # v2

    with pytest.raises(ConfirmationNeeded) as asked:
        service.skip(accepted, annotator="alice")
    assert isinstance(asked.value, RequestError)
    message = str(asked.value)
    assert "v2" in message and "erin" in message and "export" in message and "retraining" in message
    assert store.get_case(accepted).status == "accepted"
    exported = {row["case_id"] for row in store.corrections() if row["case_status"] != "skipped"}
    assert exported == {corrected, accepted}

    service.skip(accepted, annotator="alice", discard_saved=True)
    service.skip(corrected, annotator="alice", discard_saved=True)
    assert store.get_case(accepted).status == store.get_case(corrected).status == "skipped"
    assert {row["case_id"] for row in store.corrections() if row["case_status"] != "skipped"} == set()

    service.unskip(accepted, annotator="alice")
    service.unskip(corrected, annotator="alice")
    assert store.get_case(accepted).status == "accepted"      # its latest saved version's status
    assert store.get_case(corrected).status == "corrected"
    with pytest.raises(RequestError, match="not skipped"):
        service.unskip(corrected, annotator="alice")
    with pytest.raises(RequestError, match="annotator name is required"):
        service.unskip(corrected, annotator=" ")
    service.close()
