"""Volume cases in the annotation store: the scan kept exactly, slices on demand, masks as stacked
slices through versions and drafts, quantised maps within their stated error, the queue's start slice."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from medclipseg.annotation import volume_files
from medclipseg.annotation.errors import StorageError, VersionConflict
from medclipseg.annotation.store import AnnotationStore
from medclipseg.io.volumes import ScanVolume, read_nifti

T1 = Path("/usr/share/mricron/templates/ch2bet.nii.gz")


@dataclass
class FakeVolumePrediction:
    """What the store reads of medclipseg.inference.volume.VolumePrediction."""

    probability: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    mask: np.ndarray
    scores: dict
    slice_scores: dict
    start_slice: int
    window: tuple
    threshold: float = 0.5
    num_samples: int = 4
    model_id: str = "fake@1"
    prompt: str = "brain"
    seconds: float = 0.1
    conversions: list = field(default_factory=list)


def binary_entropy(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


@pytest.fixture(scope="module")
def t1_crop() -> ScanVolume:
    if not T1.is_file():
        pytest.skip("Debian's mricron-data (the real T1) is not installed")
    volume = read_nifti(T1)
    i0, j0, k0 = 60, 70, 70
    shift = np.eye(4)
    shift[:3, 3] = (i0, j0, k0)
    return ScanVolume(array=volume.array[i0:i0 + 40, j0:j0 + 44, k0:k0 + 12].copy(), affine=volume.affine @ shift,
                      modality="MR", name="t1.nii.gz")


def fake_prediction(volume: ScanVolume, start: int = 3) -> FakeVolumePrediction:
    values = volume.array
    probability = np.clip((values - values.min()) / (np.ptp(values) + 1e-6), 0, 1).astype(np.float32)
    entropy = binary_entropy(probability).astype(np.float32)
    depth = volume.display_shape()[0]
    band = np.linspace(0.1, 0.2, depth).astype(np.float32)
    band[start] = 0.9
    return FakeVolumePrediction(probability=probability, entropy=entropy, mutual_information=entropy * 0.1,
                                mask=probability > 0.5, scores={"band_entropy": 0.4, "mean_entropy": 0.2},
                                slice_scores={"band_entropy": band}, start_slice=start, window=(50.0, 100.0))


def test_volume_case_keeps_scan_geometry_and_serves_slices(tmp_path, t1_crop):
    store = AnnotationStore(tmp_path / "a.db")
    prediction = fake_prediction(t1_crop)
    case, prediction_id = store.add_volume_case_with_prediction(t1_crop, prediction, prompt="brain",
                                                               original_name="t1.nii.gz")
    assert case.is_volume and case.start_slice == 3
    depth, rows, columns = t1_crop.display_shape()
    assert (case.width, case.height) == (columns, depth * rows)
    back = store.load_volume(case.id)
    assert back.shape == t1_crop.shape and np.array_equal(back.affine, t1_crop.affine)
    assert np.array_equal(back.array, t1_crop.array)
    for index in (0, 3, depth - 1):
        assert np.array_equal(store.volume_slice(case.id, index), t1_crop.to_display()[index])
        piece = store.prediction_slice(prediction_id, index)
        expected = t1_crop.to_display(prediction.probability)[index]
        assert np.abs(piece["probability"] - expected).max() <= 1 / 510 + 1e-6
        expected_entropy = t1_crop.to_display(prediction.entropy)[index]
        assert np.abs(piece["entropy"] - expected_entropy).max() <= math.log(2) / 510 + 1e-6
        assert np.array_equal(piece["mask"], t1_crop.to_display(prediction.mask)[index])
    assert int(np.argmax(store.slice_scores(prediction_id)["band_entropy"])) == 3
    with pytest.raises(StorageError, match="does not exist"):
        store.volume_slice(case.id, depth)
    # The same scan and prompt again is the same case, with a second prediction.
    again, second = store.add_volume_case_with_prediction(t1_crop, prediction, prompt="brain",
                                                         original_name="copy.nii.gz")
    assert again.id == case.id and second != prediction_id


def test_volume_versions_and_drafts_take_3d_masks_and_reviewed_slices(tmp_path, t1_crop):
    store = AnnotationStore(tmp_path / "a.db")
    case, prediction_id = store.add_volume_case_with_prediction(t1_crop, fake_prediction(t1_crop), prompt="brain",
                                                               original_name="t1.nii.gz")
    depth, rows, columns = t1_crop.display_shape()
    corrected = np.zeros((depth, rows, columns), bool)
    corrected[2, 5:20, 6:30] = True
    draft = store.save_draft(case.id, "ann", corrected, reviewed_slices=[2, 1], base_version=None)
    assert draft.reviewed_slices == (1, 2)
    assert np.array_equal(volume_files.unmosaic(store.draft(case.id, "ann").mask, store.volume_geometry(case.id)),
                          corrected)
    saved = store.save_correction(case.id, corrected, annotator="ann", reviewed_slices=[2], base_version=None)
    row = store.latest_correction(case.id)
    assert json.loads(row["reviewed_slices"]) == [2] and saved.version == 1
    assert np.array_equal(store.load_mask(row["mask_path"]).reshape(depth, rows, columns), corrected)
    with pytest.raises(VersionConflict):
        store.save_correction(case.id, corrected, annotator="other", reviewed_slices=[2], base_version=None)
    with pytest.raises(StorageError, match="between 0 and"):
        store.save_correction(case.id, corrected, annotator="ann", reviewed_slices=[depth], base_version=1)
    with pytest.raises(StorageError, match="shape"):
        store.save_correction(case.id, corrected[:, :-1], annotator="ann", base_version=1)
    assert store.latest_correction(case.id)["version"] == 1  # refusals wrote nothing


def test_volume_case_enters_the_queue_with_its_start_slice(tmp_path, t1_crop):
    store = AnnotationStore(tmp_path / "a.db")
    case, _ = store.add_volume_case_with_prediction(t1_crop, fake_prediction(t1_crop, start=5), prompt="brain",
                                                   original_name="t1.nii.gz")
    served = store.next_case("ann", acquisition="band_entropy")
    assert served.id == case.id and served.start_slice == 5 and served.kind == "volume"


def test_a_new_prediction_moves_the_start_slice_and_its_fingerprint(tmp_path, t1_crop):
    """Re-scoring by a new model: the queue, and the diverse orders' likeness, follow the new start slice."""
    from medclipseg.annotation import diversity
    from medclipseg.io.volumes import window_to_uint8

    store = AnnotationStore(tmp_path / "a.db")
    case, _ = store.add_volume_case_with_prediction(t1_crop, fake_prediction(t1_crop, start=2), prompt="brain",
                                                   original_name="t1.nii.gz")
    store.add_volume_prediction(case.id, fake_prediction(t1_crop, start=9))
    row = store._db()["cases"].get(case.id)
    assert (row["start_slice"], row["slice_index"]) == (9, 9)
    geometry = store.volume_geometry(case.id)
    expected = diversity.image_descriptor(window_to_uint8(t1_crop.to_display()[9], geometry.window))
    assert row["descriptor"] == expected


def test_quantisation_error_is_within_half_a_step():
    rng = np.random.default_rng(0)
    for name, top in (("probability", 1.0), ("entropy", math.log(2)), ("mutual_information", math.log(2))):
        values = rng.uniform(0, top, size=(50, 60)).astype(np.float32)
        back = volume_files.dequantise(name, volume_files.quantise(name, values))
        assert np.abs(back - values).max() <= volume_files.QUANTISATION_STEP[name] / 2 + 1e-6


def test_slice_provenance_is_kept_in_drafts_versions_and_refused_when_wrong(tmp_path, t1_crop):
    from medclipseg.annotation.volume_tools import DRAWN, INTERPOLATED, PREDICTED, PROPAGATED

    store = AnnotationStore(tmp_path / "a.db")
    case, _ = store.add_volume_case_with_prediction(t1_crop, fake_prediction(t1_crop), prompt="brain",
                                                   original_name="t1.nii.gz")
    depth, rows, columns = t1_crop.display_shape()
    mask = np.zeros((depth, rows, columns), bool)
    provenance = [PREDICTED] * depth
    provenance[1], provenance[2], provenance[4], provenance[5] = DRAWN, INTERPOLATED, DRAWN, PROPAGATED
    draft = store.save_draft(case.id, "ann", mask, slice_provenance=provenance)
    expected = {"drawn": [1, 4], "interpolated": [2], "propagated": [5]}
    assert draft.slice_provenance == expected and store.draft(case.id, "ann").slice_provenance == expected
    store.save_correction(case.id, mask, annotator="ann", reviewed_slices=[1, 4], slice_provenance=expected)
    assert json.loads(store.latest_correction(case.id)["slice_provenance"]) == expected
    for wrong, words in (([DRAWN] * (depth + 1), "volume has"), ({"drawn": [depth]}, "outside"),
                         ({"drawn": [1], "propagated": [1]}, "two provenances"), ({"guessed": [1]}, "unknown")):
        with pytest.raises(StorageError, match=words):
            store.save_correction(case.id, mask, annotator="ann", slice_provenance=wrong)
    assert store.latest_correction(case.id)["version"] == 1  # refusals wrote nothing


def test_slices_saved_by_others_since_a_version_are_the_ones_propagation_must_leave(tmp_path, t1_crop):
    from types import SimpleNamespace

    from medclipseg.annotation.volume_workflow import slices_saved_since

    store = AnnotationStore(tmp_path / "a.db")
    case, _ = store.add_volume_case_with_prediction(t1_crop, fake_prediction(t1_crop), prompt="brain",
                                                   original_name="t1.nii.gz")
    mask = np.zeros(t1_crop.display_shape(), bool)
    service = SimpleNamespace(store=store)
    assert slices_saved_since(service, case.id, None) == []
    store.save_correction(case.id, mask, annotator="ann", reviewed_slices=[1, 2], base_version=None)
    store.save_correction(case.id, mask, annotator="bob", reviewed_slices=[2, 7], base_version=1)
    store.save_correction(case.id, mask, annotator="ann", reviewed_slices=[9], base_version=2)
    assert slices_saved_since(service, case.id, None) == [1, 2, 7, 9]
    assert slices_saved_since(service, case.id, 1) == [2, 7, 9]
    assert slices_saved_since(service, case.id, 1, annotator="ann") == [2, 7]
    assert slices_saved_since(service, case.id, 3) == []
    assert [row["version"] for row in store.versions_after(case.id, 1)] == [2, 3]
