"""Model versions, promotion and rollback, the gold split, and a queue ranked by the current model only."""
from __future__ import annotations

import json

import numpy as np
import pytest

from annotation_support import sql_connection, image
from app_support import prediction_from_probability
from medclipseg.annotation.gold import gold_draw, is_gold
from medclipseg.annotation.queue import ACQUISITIONS, DEFAULT_ACQUISITION
from medclipseg.annotation.store import AnnotationStore, StorageError

SHAPE = (24, 32)


def _disk(radius: float, centre=(12, 16), shape=SHAPE) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def _prediction(probability, model_id="model-a@1", prompt="a round lesion"):
    return prediction_from_probability(probability, model_id=model_id, prompt=prompt)


def _trained_folder(store, name: str):
    folder = store.models_dir / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_gold_draw_is_fixed_by_seed_and_image_and_has_the_asked_share():
    hashes = [f"{i:064x}" for i in range(4000)]
    draws = [gold_draw(h, "7") for h in hashes]
    assert draws == [gold_draw(h, "7") for h in hashes]  # reproducible
    assert draws != [gold_draw(h, "8") for h in hashes]  # the seed matters
    share = np.mean([is_gold(h, seed="7", fraction=0.2) for h in hashes])
    assert abs(share - 0.2) < 4 * np.sqrt(0.2 * 0.8 / len(hashes))  # binomial, four standard errors
    assert all(0.0 <= d < 1.0 for d in draws)


def test_gold_flag_is_chosen_once_per_image_at_first_correction(store):
    store.set_gold_fraction(0.5, seed=3)
    flags = {}
    for seed in range(12):
        pixels = image(seed)
        first = store.add_case(pixels, prompt="a round lesion", original_name=f"{seed}.png")
        second = store.add_case(pixels, prompt="another structure", original_name=f"{seed}.png")
        for case in (first, second):
            store.add_prediction(case.id, _prediction(np.full(SHAPE, 0.2, np.float32)))
            store.save_correction(case.id, _disk(4), annotator="alice")
        rows = {r["case_id"]: r["gold"] for r in store.corrections()}
        assert rows[first.id] == rows[second.id]  # the same pixels land on the same side
        assert rows[first.id] == int(is_gold(first.content_hash, seed="3", fraction=0.5))
        flags[first.id] = rows[first.id]
    assert 0 < sum(flags.values()) < len(flags)
    store.set_gold_fraction(0.0)  # a later change keeps earlier choices
    some_gold = next(case_id for case_id, flag in flags.items() if flag)
    store.save_correction(some_gold, _disk(5), annotator="bob")
    assert {r["case_id"]: r["gold"] for r in store.corrections()}[some_gold] == 1
    with pytest.raises(StorageError, match="gold fraction"):
        store.set_gold_fraction(1.5)


def test_misses_are_served_before_confident_correct_cases(store):
    """An empty prediction with probability mass under the threshold (a miss) is served before
    confident correct ones by band entropy; the earlier foreground-entropy order served it last."""
    confident = np.where(_disk(6), 0.995, 0.002).astype(np.float32)
    missed = np.where(_disk(6), 0.3, 0.002).astype(np.float32)   # the model saw something, below 0.5
    absent = np.full(SHAPE, 1e-4, np.float32)                    # correctly empty: nearly no mass
    ids = {}
    for name, probability, prompt in (("confident-1", confident, "a round lesion"),
                                      ("miss", missed, "a round lesion"),
                                      ("confident-2", np.roll(confident, 3, axis=1), "a round lesion"),
                                      ("absent", absent, "No lesion in the image.")):
        case = store.add_case(image(len(ids) + 50), prompt=prompt, original_name=f"{name}.png")
        prediction = _prediction(probability, prompt=prompt)
        assert (name == "miss") == (not prediction.mask.any() and name != "absent")
        store.add_prediction(case.id, prediction)
        ids[case.id] = name
    served = [ids[store.next_case(f"annotator{i}", acquisition="band_entropy").id] for i in range(4)]
    assert served[0] == "miss"
    assert served.index("absent") > served.index("miss")
    for index in range(4):
        store.release(next(i for i, n in ids.items() if n == served[index]), annotator=f"annotator{index}")
    old_default = [ids[store.next_case(f"old{i}", acquisition="foreground_entropy").id] for i in range(4)]
    assert old_default.index("miss") > old_default.index("confident-1")


def test_base_version_promotion_rollback_and_ranks_by_current_model(store):
    base = store.ensure_base_version("model-a@1", source="demo", name="model-a")
    assert base.current and base.kind == "base" and store.current_model_id() == "model-a@1"
    assert store.ensure_base_version("other@2", source="x", name="other").id == "model-a@1"  # once only
    cases = [store.add_case(image(i), prompt="a round lesion", original_name=f"{i}.png") for i in range(3)]
    for index, case in enumerate(cases):
        store.add_prediction(case.id, _prediction(np.where(_disk(2 + index), 0.3, 0.01).astype(np.float32)))
    # A prediction by a model that is not current is stored but does not rank its case.
    store.add_prediction(cases[0].id, _prediction(np.where(_disk(5), 0.9, 0.01).astype(np.float32), "model-b@2"))
    assert store.cases_to_rescore("model-a@1") == []
    conn = sql_connection(store)
    ranked = dict(conn.execute("SELECT id, ranked_model_id FROM cases").fetchall())
    assert set(ranked.values()) == {"model-a@1"}

    folder = _trained_folder(store, "model-b-2")
    trained = store.add_trained_version(folder, model_id="model-b@2", name="model-b", parent_id="model-a@1",
                                        created_by="alice", recipe={"epochs": 3}, correction_ids=[1, 2],
                                        train_cases=2, gold={"cases": 1, "dsc": 0.5, "nsd": 0.4,
                                                             "uncertainty_spearman": 0.7}, parent_gold_dsc=0.3)
    assert (trained.parent_id, trained.correction_ids, trained.gold_dsc, trained.current) == \
        ("model-a@1", [1, 2], 0.5, False)
    store.promote("model-b@2", by="alice")
    assert store.current_model_id() == "model-b@2"
    # Only the case model-b predicted keeps a rank; the others wait to be re-scored, served last.
    rows = conn.execute(f"SELECT id, ranked_model_id, {ACQUISITIONS['band_entropy'].column} FROM cases "
                        "ORDER BY id").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(cases[0].id, "model-b@2"), (cases[1].id, None), (cases[2].id, None)]
    latest_b = conn.execute("SELECT scores FROM predictions WHERE model_id = 'model-b@2'").fetchone()[0]
    assert rows[0][2] == pytest.approx(json.loads(latest_b)[ACQUISITIONS["band_entropy"].score_key])
    assert store.cases_to_rescore("model-b@2") == [cases[1].id, cases[2].id]
    assert store.rescore_backlog("model-b@2") == 2
    assert store.next_case("carol", acquisition="band_entropy").id == cases[0].id  # ranked first, the unranked after it by id
    assert store.next_case("dave", acquisition="band_entropy").id == cases[1].id

    back = store.rollback(by="alice")
    assert back.id == "model-a@1" and store.current_model_id() == "model-a@1"
    assert store.rescore_backlog("model-a@1") == 0  # model-a's own predictions rank again
    assert [p["reason"] for p in store.promotion_log()] == ["the model this database started with",
                                                            "promoted by hand", "rollback"]
    assert [v.id for v in store.model_versions()] == ["model-a@1", "model-b@2"]
    conn.close()


def test_promotion_refuses_unknown_lost_and_unnamed(store):
    store.ensure_base_version("model-a@1", source="demo", name="model-a")
    with pytest.raises(StorageError, match="no model version"):
        store.promote("nobody@0", by="alice")
    with pytest.raises(StorageError, match="annotator"):
        store.promote("model-a@1", by=" ")
    with pytest.raises(StorageError, match="no earlier model version"):
        store.rollback(by="alice")
    folder = _trained_folder(store, "model-c-3")
    store.add_trained_version(folder, model_id="model-c@3", name="model-c", parent_id="model-a@1",
                              created_by="alice", recipe={}, correction_ids=[], train_cases=1)
    (folder / "config.json").unlink()
    with pytest.raises(StorageError, match="lost its files"):
        store.promote("model-c@3", by="alice")
    outside = store.files_dir / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    with pytest.raises(StorageError, match="inside"):
        store.add_trained_version(outside, model_id="x@4", name="x", parent_id=None, created_by="a", recipe={},
                                  correction_ids=[], train_cases=1)


def test_versions_survive_reopening(store_location, tmp_path):
    path = store_location
    with AnnotationStore(path, files_dir=tmp_path / "files") as first:
        first.ensure_base_version("model-a@1", source="demo", name="model-a")
    with AnnotationStore(path, files_dir=tmp_path / "files") as again:
        assert again.current_model_id() == "model-a@1"
        assert again.model_source("model-a@1") == "demo"


def test_cases_to_rescore_includes_cases_never_predicted_and_leaves_out_excluded_ones(store):
    """Ingest and segment add a case together with its prediction, so a case without one (an older
    database) is simply waiting: it is re-scored at once, with no grace period. ``exclude`` names
    cases the caller has given up on (re-scoring failed), so a pass can move past them."""
    store.ensure_base_version("model-a@1", source="x", name="model-a")
    waiting = store.add_case(image(1), prompt="a round lesion", original_name="new.png")
    predicted = store.add_case(image(2), prompt="a round lesion", original_name="old.png")
    store.add_prediction(predicted.id, _prediction(np.where(_disk(3), 0.3, 0.01).astype(np.float32), "other@9"))
    assert store.cases_to_rescore("model-a@1") == [waiting.id, predicted.id]
    assert store.rescore_backlog("model-a@1") == 2
    assert store.cases_to_rescore("model-a@1", exclude=[waiting.id]) == [predicted.id]
    assert store.cases_to_rescore("model-a@1", exclude={waiting.id, predicted.id}) == []
    assert store.cases_to_rescore("model-a@1", limit=1, exclude=()) == [waiting.id]


def _versions(store, *ids):
    base = store.ensure_base_version(ids[0], source="demo", name="base")
    for index, version_id in enumerate(ids[1:]):
        folder = _trained_folder(store, version_id.replace("@", "-"))
        store.add_trained_version(folder, model_id=version_id, name="trained", parent_id=base.id,
                                  created_by="alice", recipe={}, correction_ids=[], train_cases=index + 1)


def test_rollback_walks_back_through_the_promotion_history(store):
    _versions(store, "a@1", "b@2", "c@3", "d@4")
    for version_id in ("b@2", "c@3"):
        store.promote(version_id, by="alice")
    assert store.rollback_target() == "b@2"
    assert store.rollback(by="bob").id == "b@2"
    assert store.rollback(by="bob").id == "a@1"  # further back, not forth to c@3
    with pytest.raises(StorageError, match="no earlier model version"):
        store.rollback(by="bob")
    # A promotion after rollbacks starts a new branch: rolling it back returns to where it branched.
    store.promote("d@4", by="alice")
    assert store.rollback(by="bob").id == "a@1"
    kinds = [(row["version_id"], row["kind"]) for row in store.promotion_log()]
    assert kinds == [("a@1", "promote"), ("b@2", "promote"), ("c@3", "promote"), ("b@2", "rollback"),
                     ("a@1", "rollback"), ("d@4", "promote"), ("a@1", "rollback")]


def test_promote_if_current_refuses_once_the_current_model_changed(store):
    _versions(store, "a@1", "b@2", "c@3")
    # A retraining round started from a@1; meanwhile someone promoted b@2 by hand.
    store.promote("b@2", by="carol", reason="promoted by hand")
    assert store.promote_if_current("c@3", expected_current="a@1", by="worker", reason="beats parent") is False
    assert store.current_model_id() == "b@2"
    assert [row["version_id"] for row in store.promotion_log()] == ["a@1", "b@2"]  # nothing written
    assert store.promote_if_current("c@3", expected_current="b@2", by="worker", reason="beats parent") is True
    assert store.current_model_id() == "c@3"
