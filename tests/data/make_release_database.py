"""Writes an annotation database made by an earlier release, for the migration tests. Run with that
release's package on the path:

    # tests/data/release-schema6/: the release before schema 7 (schema 6)
    git archive 9aef04d medclipseg tests/annotation_support.py tests/app_support.py | tar -x -C /tmp/rel6
    PYTHONPATH=/tmp/rel6:/tmp/rel6/tests python tests/data/make_release_database.py tests/data/release-schema6
    # tests/data/release-schema8/: the last release on SQLite only, before Alembic (schema 8)
    git archive 9cebc81 medclipseg tests/annotation_support.py tests/app_support.py | tar -x -C /tmp/rel8
    PYTHONPATH=/tmp/rel8:/tmp/rel8/tests python tests/data/make_release_database.py tests/data/release-schema8
"""
import shutil
import sys
from pathlib import Path

import numpy as np

from annotation_support import case_with_prediction
from medclipseg.annotation.schema import SCHEMA_VERSION
from medclipseg.annotation.store import AnnotationStore

assert SCHEMA_VERSION in (6, 8), "run with the schema-6 or schema-8 release on the path"
out = Path(sys.argv[1])
shutil.rmtree(out, ignore_errors=True)
store = AnnotationStore(out / "annotations.db")
store.set_gold_fraction(0.5, seed=7)
store.ensure_base_version("base@1", source="demo", name="base")
for name in ("b-2", "c-3"):
    folder = store.models_dir / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    store.add_trained_version(folder, model_id=name.replace("-", "@"), name="trained", parent_id="base@1",
                              created_by="alice", recipe={"epochs": 1}, correction_ids=[1], train_cases=1)
cases = [case_with_prediction(store, seed)[0] for seed in range(6)]
rng = np.random.default_rng(0)
for index, case in enumerate(cases[:4]):
    store.save_correction(case.id, rng.random((24, 32)) > 0.5, annotator="alice" if index % 2 else "bob")
store.save_correction(cases[0].id, rng.random((24, 32)) > 0.5, annotator="carol", base_version=1)
store.save_correction(cases[1].id, None, annotator="alice", status="accepted")
store.skip(cases[4].id, annotator="bob")
store.save_draft(cases[5].id, "dave", rng.random((24, 32)) > 0.5)
store.next_case("erin", acquisition="random")
store.promote("b@2", by="alice")
store.promote("c@3", by="alice")
store.rollback(by="bob")
job = store.start_job("retrain", by="alice", params={"epochs": 1}, parent_id="base@1")
store.finish_job(job, status="succeeded", message="done", version_id="b@2")
if SCHEMA_VERSION >= 8:  # review and raters: rows in reviews and declines, rater chains
    store.set_project_settings(review_required=True)
    store.submit_for_review(cases[2].id, by="bob")
    store.decide_review(cases[2].id, reviewer="rita", version=1, approve=False, comment="misses the rim")
    store.submit_for_review(cases[3].id, by="alice")
    store.decide_review(cases[3].id, reviewer="rita", version=1, approve=True)
    store.set_project_settings(raters_per_case=2)
    extra = [case_with_prediction(store, seed)[0] for seed in range(6, 8)]
    store.save_correction(extra[0].id, rng.random((24, 32)) > 0.5, annotator="ann")
    store.save_correction(extra[0].id, rng.random((24, 32)) > 0.5, annotator="ben")
    store.skip(extra[1].id, annotator="ann")
store.close()
for extra in out.glob("annotations.db-*"):  # a closed WAL database: checkpointed into the file
    extra.unlink()
print(f"wrote {out}")
