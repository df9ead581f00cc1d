"""The team's commands: project, agreement, snapshot, restore (each one library call)."""
from __future__ import annotations

import json

import numpy as np

from annotation_support import case_with_prediction
from medclipseg.annotation.store import AnnotationStore
from medclipseg.cli import main


def box(top, left):
    mask = np.zeros((24, 32), bool)
    mask[top:top + 10, left:left + 12] = True
    return mask


def test_project_agreement_snapshot_and_restore(tmp_path, capsys):
    db = tmp_path / "db" / "annotations.db"
    assert main(["project", "--db", str(db)]) == 0
    assert capsys.readouterr().out.strip() == "review_required=0 raters_per_case=1"
    assert main(["project", "--db", str(db), "--review", "on", "--raters", "2"]) == 0
    assert capsys.readouterr().out.strip() == "review_required=1 raters_per_case=2"
    assert main(["project", "--db", str(db), "--raters", "11"]) == 2
    assert "raters per case must be a whole number from 1 to 10" in capsys.readouterr().err

    with AnnotationStore(db) as store:
        case = case_with_prediction(store, 1)[0]
        store.save_correction(case.id, box(5, 5), annotator="ann")
        store.save_correction(case.id, box(5, 8), annotator="bea")
    assert main(["agreement", "--db", str(db), "--case", str(case.id)]) == 0
    found = json.loads(capsys.readouterr().out)
    expected = 2 * (box(5, 5) & box(5, 8)).sum() / (box(5, 5).sum() + box(5, 8).sum())
    assert found["raters"] == ["ann", "bea"] and abs(found["mean_pairwise_dice"] - expected) < 1e-9
    assert main(["agreement", "--db", str(db), "--case", "99"]) == 2
    assert "Case 99 does not exist" in capsys.readouterr().err

    assert main(["snapshot", "--db", str(db), "--to", str(tmp_path / "bucket")]) == 0
    assert capsys.readouterr().out.startswith("snapshot=")
    assert main(["restore", "--db", str(db), "--from", str(tmp_path / "bucket")]) == 2
    assert "never replaced" in capsys.readouterr().err
    restored = tmp_path / "elsewhere" / "annotations.db"
    assert main(["restore", "--db", str(restored), "--from", str(tmp_path / "bucket")]) == 0
    with AnnotationStore(restored) as store:
        assert sorted(store.rater_masks(case.id)) == ["ann", "bea"]
    assert main(["restore", "--db", str(tmp_path / "x.db"), "--from", str(tmp_path / "nothing")]) == 2
    assert "no readable snapshot" in capsys.readouterr().err


def test_snapshot_and_restore_refuse_a_postgres_database_in_words(capsys):
    from medclipseg.cli import main

    url = "postgresql://annot:s3cret@db.example:5432/project"
    assert main(["snapshot", "--db", url, "--to", "runs/never"]) == 2
    assert main(["restore", "--db", url, "--from", "runs/never"]) == 2
    err = capsys.readouterr().err
    assert "pg_dump" in err and "s3cret" not in err
