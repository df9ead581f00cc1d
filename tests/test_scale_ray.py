"""The Ray engine (medclipseg.scale): bulk ingest and re-scoring on a local Ray with 2 CPUs, checked
against the single-process engine; resuming, a worker killed mid-batch, unreachable addresses."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from annotation_support import run_sql  # noqa: E402
from medclipseg.annotation.ingest import ingest  # noqa: E402
from medclipseg.annotation.queue import ACQUISITION_SCORES, UNCERTAINTY_ORDER  # noqa: E402
from medclipseg.annotation.store import AnnotationStore  # noqa: E402
from medclipseg.cli import main  # noqa: E402
from medclipseg.inference.predictor import Predictor  # noqa: E402
from medclipseg.inference.volume import predict_volume  # noqa: E402
from medclipseg.phantoms import generate_phantom  # noqa: E402
from medclipseg.scale.bulk import ingest_with_engine, rescore_with_engine  # noqa: E402
from medclipseg.scale.ray_engine import PredictorSpec, RayEngine, RayUnavailable, connect  # noqa: E402

PROMPT = "a tumour in the breast ultrasound image"
SAMPLES = 4
# Batches of other sizes change the blocking of the matrix products, not the arithmetic.
ROUNDING = 1e-4


@pytest.fixture(scope="module")
def local_ray():
    connect(None, num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def demo_predictor():
    return Predictor.from_pretrained("demo", device="cpu")


@pytest.fixture(scope="module")
def engine(local_ray, demo_predictor):
    return RayEngine(PredictorSpec(source="demo", device="cpu", model_id=demo_predictor.model_id), workers=2,
                     batch_size=3)


def _source(root: Path, count: int = 7, *, volume: bool = True) -> Path:
    """Phantom PNGs of several sizes, a repeated one, a broken one and (optionally) a small NIfTI scan."""
    import nibabel as nib

    root.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        phantom = generate_phantom("breast_ultrasound", 700 + index, num_targets=1)
        image = phantom.image if index % 2 else cv2.resize(phantom.image, (96, 80))
        cv2.imwrite(str(root / f"img{index:02d}.png"), image)
    (root / "repeat.png").write_bytes((root / "img01.png").read_bytes())
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    if volume:
        rng = np.random.default_rng(0)
        scan = rng.normal(100, 20, (24, 20, 5)).astype(np.float32)
        scan[6:14, 5:12, :] += 120
        affine = np.diag([0.8, 0.9, 2.5, 1.0])
        nib.save(nib.Nifti1Image(scan, affine), str(root / "scan.nii.gz"))
    return root


def _local_ingest(store, predictor, source):
    return ingest(store, predictor, source, prompt=PROMPT, num_samples=SAMPLES, seed=0, batch_size=4,
                  predict_volume=lambda volume, text, **options: predict_volume(predictor, volume, text, **options))


def _ray_ingest(store, engine, model_id, source, **kwargs):
    return ingest_with_engine(store, engine, source, model_id=model_id, prompt=PROMPT, num_samples=SAMPLES, seed=0,
                              **kwargs)


def _queue(store) -> list:
    column = ACQUISITION_SCORES[UNCERTAINTY_ORDER]
    return [(row["original_name"], row[column]) for row in run_sql(
        store, f'SELECT original_name, "{column}" FROM cases WHERE status = \'unreviewed\' '
               f'ORDER BY "{column}" DESC, original_name')]


def _predictions_per_case(store) -> dict:
    return {row["original_name"]: row["n"] for row in run_sql(
        store, "SELECT c.original_name, count(p.id) AS n FROM cases c LEFT JOIN predictions p ON p.case_id = c.id "
               "GROUP BY c.original_name")}


def _maps_by_name(store) -> dict:
    found = {}
    for row in run_sql(store, "SELECT id, original_name FROM cases"):
        prediction_id = store.latest_prediction_id(row["id"])
        case = store.get_case(row["id"])
        found[row["original_name"]] = (store.prediction_maps_volume(prediction_id) if case.is_volume
                                       else store.load_prediction(prediction_id).probability)
    return found


def test_ray_ingest_gives_the_local_engines_cases_predictions_and_queue(tmp_path, engine, demo_predictor):
    source = _source(tmp_path / "source")
    local = AnnotationStore(tmp_path / "local.db")
    on_ray = AnnotationStore(tmp_path / "ray.db")
    try:
        local_report = _local_ingest(local, demo_predictor, source)
        ray_report = _ray_ingest(on_ray, engine, demo_predictor.model_id, source)
        assert len(ray_report.added) == len(local_report.added) == 8  # 7 images and the scan
        assert len(ray_report.volumes) == 1
        assert len(ray_report.duplicates) == len(local_report.duplicates) == 1  # repeat.png
        assert [name for name, _ in ray_report.failed] == [name for name, _ in local_report.failed] == ["broken.png"]
        assert "truncated or corrupt" in ray_report.failed[0][1]
        local_maps, ray_maps = _maps_by_name(local), _maps_by_name(on_ray)
        assert sorted(local_maps) == sorted(ray_maps)
        for name, values in local_maps.items():
            np.testing.assert_allclose(ray_maps[name], values, atol=ROUNDING if values.ndim == 2 else 1 / 255)
        local_queue, ray_queue = _queue(local), _queue(on_ray)
        assert [name for name, _ in ray_queue] == [name for name, _ in local_queue]
        np.testing.assert_allclose([rank for _, rank in ray_queue], [rank for _, rank in local_queue],
                                   atol=ROUNDING)
        assert set(_predictions_per_case(on_ray).values()) == {1}
        assert on_ray.integrity_check() == "ok"
        # Idempotent: the same source again adds and predicts nothing.
        again = _ray_ingest(on_ray, engine, demo_predictor.model_id, source)
        assert again.added == [] and again.rescored == [] and len(again.duplicates) == 9
        assert set(_predictions_per_case(on_ray).values()) == {1}
    finally:
        local.close()
        on_ray.close()


class _Interrupted(Exception):
    pass


def test_an_interrupted_run_started_again_does_the_rest_only(tmp_path, engine, demo_predictor):
    source = _source(tmp_path / "source", count=6, volume=False)
    store = AnnotationStore(tmp_path / "ray.db")
    stored = []

    def stop_after_two(done, total, message):
        if "added as" in message:
            stored.append(message)
            if len(stored) == 2:
                raise _Interrupted

    try:
        with pytest.raises(_Interrupted):
            _ray_ingest(store, engine, demo_predictor.model_id, source, progress=stop_after_two)
        # Writes already started on the driver's threads finish; nothing after them starts.
        kept = len(run_sql(store, "SELECT id FROM cases"))
        assert 2 <= kept < 6
        report = _ray_ingest(store, engine, demo_predictor.model_id, source)
        assert len(report.added) == 6 - kept  # the rest only
        assert len(report.duplicates) == kept + 1  # those stored before, and repeat.png
        assert len(run_sql(store, "SELECT id FROM cases")) == 6
        assert set(_predictions_per_case(store).values()) == {1}
    finally:
        store.close()


@dataclass(frozen=True)
class _DiesOnce(PredictorSpec):
    """A worker that kills its own process in the middle of its first batch (once per marker file)."""

    marker: str = ""

    def build(self):
        predictor = super().build()
        marker = Path(self.marker)
        original = predictor.predict_batch

        def predict_batch(items, **options):
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)  # no clean-up, no exception: as the OOM killer does it
            return original(items, **options)

        predictor.predict_batch = predict_batch
        return predictor


def test_a_worker_killed_mid_batch_loses_nothing_and_writes_nothing_twice(tmp_path, local_ray, demo_predictor):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    marker = tmp_path / "killed"
    try:
        engine = RayEngine(_DiesOnce(source="demo", device="cpu", model_id=demo_predictor.model_id, marker=str(marker)),
                           workers=1, batch_size=3)
        source = _source(tmp_path / "source", count=6, volume=False)
        store = AnnotationStore(tmp_path / "ray.db")
        try:
            report = _ray_ingest(store, engine, demo_predictor.model_id, source)
            assert marker.exists()  # a worker did die mid-batch
            assert len(report.added) == 6 and report.failed[0][0] == "broken.png" and len(report.failed) == 1
            assert set(_predictions_per_case(store).values()) == {1}
            assert store.integrity_check() == "ok"
        finally:
            store.close()
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_rescore_on_ray_predicts_each_unranked_case_once(tmp_path, engine, demo_predictor):
    store = AnnotationStore(tmp_path / "ray.db")
    try:
        store.ensure_base_version(demo_predictor.model_id, source="demo", name="demo")
        images = [generate_phantom("breast_ultrasound", 900 + i, num_targets=1).image for i in range(4)]
        case_ids = [store.add_case(image, prompt=PROMPT, original_name=f"p{i}.png").id
                    for i, image in enumerate(images)]
        report = rescore_with_engine(store, engine, model_id=demo_predictor.model_id, num_samples=SAMPLES)
        assert sorted(report.rescored) == case_ids and report.failed == []
        for case_id, image in zip(case_ids, images):
            alone = demo_predictor.predict(image, PROMPT, num_samples=SAMPLES, seed=0, channel_order="bgr")
            stored = store.load_prediction(store.latest_prediction_id(case_id))
            np.testing.assert_allclose(stored.probability, alone.probability, atol=ROUNDING)
        assert store.rescore_backlog(demo_predictor.model_id) == 0
        again = rescore_with_engine(store, engine, model_id=demo_predictor.model_id, num_samples=SAMPLES)
        assert again.rescored == []
        assert set(_predictions_per_case(store).values()) == {1}
    finally:
        store.close()


def test_cli_ingest_and_rescore_with_the_ray_engine(tmp_path, local_ray, capsys):
    source = _source(tmp_path / "source", count=3, volume=False)
    db = str(tmp_path / "cli.db")
    assert main(["ingest", "--db", db, "--source", str(source), "--prompt", PROMPT, "--num-samples", "2",
                 "--engine", "ray", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "engine: Ray, 1 worker" in out
    assert "3 images added, 1 already in the queue, 1 failed" in out
    assert main(["rescore", "--db", db, "--engine", "ray", "--workers", "1", "--num-samples", "2"]) == 0
    assert "rescored=0" in capsys.readouterr().out  # all ranked by the current version already


def test_engine_options_are_checked_in_words(tmp_path, local_ray, capsys):
    source = _source(tmp_path / "source", count=2, volume=False)
    db = str(tmp_path / "cli.db")
    assert main(["ingest", "--db", db, "--source", str(source), "--prompt", PROMPT, "--ray-address", "1.2.3.4:6379"]) == 2
    assert "--ray-address and --workers go with --engine ray" in capsys.readouterr().err
    assert main(["ingest", "--db", db, "--source", str(source), "--prompt", PROMPT, "--engine", "ray",
                 "--workers", "3"]) == 2
    assert "3 workers need 3 CPUs; the cluster has 2" in capsys.readouterr().err
    assert main(["rescore", "--db", db, "--engine", "ray", "--precision", "fp8"]) == 2
    assert "Unknown --precision 'fp8'" in capsys.readouterr().err


@pytest.mark.parametrize("address, words", [
    ("127.0.0.1:1", "No Ray cluster answers at 127.0.0.1:1"),
    ("ray://127.0.0.1:1", "No Ray cluster answers at ray://127.0.0.1:1"),
    ("not-an-address", "is not host:port"),
])
def test_an_unreachable_ray_address_fails_at_once_in_words(tmp_path, address, words, capsys):
    started = time.perf_counter()
    with pytest.raises(RayUnavailable, match=words):
        connect(address)
    assert time.perf_counter() - started < 5
    source = _source(tmp_path / "source", count=2, volume=False)
    db = tmp_path / "cli.db"
    assert main(["ingest", "--db", str(db), "--source", str(source), "--prompt", PROMPT, "--engine", "ray",
                 "--ray-address", address]) == 2
    assert words in capsys.readouterr().err
    store = AnnotationStore(db)
    try:
        assert run_sql(store, "SELECT id FROM cases") == []  # nothing written
    finally:
        store.close()


def test_ray_ingest_into_the_team_store_on_postgresql(tmp_path, engine, demo_predictor, postgres_database):
    source = _source(tmp_path / "source", count=4, volume=False)
    team = AnnotationStore(postgres_database, files_dir=tmp_path / "team_files")
    local = AnnotationStore(tmp_path / "local.db")
    try:
        report = _ray_ingest(team, engine, demo_predictor.model_id, source)
        assert len(report.added) == 4 and len(report.duplicates) == 1 and len(report.failed) == 1
        _local_ingest(local, demo_predictor, source)
        team_queue, local_queue = _queue(team), _queue(local)
        assert [name for name, _ in team_queue] == [name for name, _ in local_queue]
        np.testing.assert_allclose([r for _, r in team_queue], [r for _, r in local_queue], atol=ROUNDING)
        assert set(_predictions_per_case(team).values()) == {1}
        again = _ray_ingest(team, engine, demo_predictor.model_id, source)
        assert again.added == [] and len(again.duplicates) == 5
    finally:
        team.close()
        local.close()
