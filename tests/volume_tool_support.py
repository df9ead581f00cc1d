"""A volume case with a model the tests control, put straight into a store: a disc growing from slice
to slice (p = 0.95 inside, 0.03 outside) and, on ``UNSURE``, a ring of p = 0.5 round its edge (the
model unsure there: band entropy ln 2). Used by the volume tool tests, handlers and browser."""
from __future__ import annotations

import numpy as np

from medclipseg.io.volumes import ScanVolume
from test_annotation_volumes import FakeVolumePrediction, binary_entropy

DEPTH, ROWS, COLUMNS = 14, 48, 48
SLICE_MM = 2.0
UNSURE = 10


def disc(radius: float, center=(24, 24), shape=(ROWS, COLUMNS)) -> np.ndarray:
    rows, columns = np.ogrid[:shape[0], :shape[1]]
    return (rows - center[0]) ** 2 + (columns - center[1]) ** 2 <= radius ** 2


def radius_of(index: int) -> float:
    return 6.0 + 0.5 * index


def display_maps() -> tuple:
    """(probability, entropy, band strip) in display order [slice, row, column]."""
    probability = np.full((DEPTH, ROWS, COLUMNS), 0.03, np.float32)
    for index in range(DEPTH):
        probability[index][disc(radius_of(index))] = 0.95
    ring = disc(radius_of(UNSURE) + 3) & ~disc(radius_of(UNSURE) - 3)
    probability[UNSURE][ring] = 0.5
    strip = np.full(DEPTH, 0.05, np.float32)
    strip[UNSURE] = 0.69
    return probability, binary_entropy(probability).astype(np.float32), strip


def controlled_case(store, prompt: str = "disc", model_id: str = "fake@1"):
    """(case, prediction id, volume) of the controlled volume added to ``store``; ``model_id``: the
    prediction's model (the app's own, so that its queue does not predict the case again)."""
    affine = np.diag([1.0, 1.0, SLICE_MM, 1.0])
    placeholder = ScanVolume(array=np.zeros((COLUMNS, ROWS, DEPTH), np.int16), affine=affine, modality="MR",
                             name="disc.nii.gz")
    assert placeholder.display_shape() == (DEPTH, ROWS, COLUMNS), placeholder.display_shape()
    probability, entropy, strip = display_maps()
    scan = (probability * 1000).astype(np.int16)
    volume = ScanVolume(array=placeholder.from_display(scan), affine=affine, modality="MR", name="disc.nii.gz")
    raw = volume.from_display
    prediction = FakeVolumePrediction(
        probability=raw(probability), entropy=raw(entropy), mutual_information=raw(entropy * 0.1),
        mask=raw(probability > 0.5), scores={"band_entropy": 0.3, "mean_entropy": 0.1},
        slice_scores={"band_entropy": strip}, start_slice=4, window=(500.0, 1000.0), prompt=prompt,
        model_id=model_id)
    case, prediction_id = store.add_volume_case_with_prediction(volume, prediction, prompt=prompt,
                                                               original_name="disc.nii.gz")
    return case, prediction_id, volume
