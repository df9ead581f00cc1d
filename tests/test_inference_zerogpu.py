"""medclipseg.inference.zerogpu: every app prediction asks a ZeroGPU Space for a GPU with a duration
from the request's size, and is the plain call elsewhere."""
from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest

from medclipseg.inference import zerogpu


class _FakeSpaces(types.ModuleType):
    """What the decorator of the `spaces` package is seen to do: record the duration each call asks."""

    def __init__(self):
        super().__init__("spaces")
        self.asked = []

    def GPU(self, duration):  # noqa: N802  (the package's name)
        def decorate(function):
            def on_gpu(*args, **kwargs):
                self.asked.append((function.__name__, duration(*args, **kwargs)))
                return function(*args, **kwargs)
            return on_gpu
        return decorate


@pytest.fixture()
def on_zerogpu(monkeypatch):
    fake = _FakeSpaces()
    monkeypatch.setitem(sys.modules, "spaces", fake)
    module = importlib.reload(zerogpu)
    yield module, fake
    monkeypatch.delitem(sys.modules, "spaces")
    importlib.reload(zerogpu)


class _Predictor:
    def predict(self, image, prompt, **options):
        return ("predicted", prompt, options["num_samples"])


class _Volume:
    slice_plane = "axial"

    def __init__(self, slices):
        self.slices = slices

    def to_display(self, plane):
        return np.zeros((self.slices, 4, 4), np.float32)


def test_predictions_ask_for_a_duration_from_their_size(on_zerogpu):
    module, fake = on_zerogpu
    assert module.predict(_Predictor(), None, "a lesion", num_samples=30) == ("predicted", "a lesion", 30)
    module.predict(_Predictor(), None, "a lesion", num_samples=64)
    assert [name for name, _ in fake.asked] == ["predict", "predict"]
    (_, short), (_, longer) = fake.asked
    assert zerogpu.MIN_SECONDS <= short <= longer <= zerogpu.MAX_SECONDS
    # A scan asks for every slice times every sample, within the platform's longest call.
    small = module.volume_seconds(None, _Volume(20), "a lesion", num_samples=8)
    large = module.volume_seconds(None, _Volume(600), "a lesion", num_samples=8)
    assert small < large
    assert module.volume_seconds(None, _Volume(5000), "a lesion", num_samples=64) == zerogpu.MAX_SECONDS
    assert large == int(np.ceil(zerogpu.SETUP_SECONDS + zerogpu.SECONDS_PER_IMAGE_SAMPLE * 600 * 8))


def test_without_the_spaces_package_the_calls_are_plain(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # import spaces raises ImportError
    module = importlib.reload(zerogpu)
    try:
        assert module.predict.__module__ == "medclipseg.inference.zerogpu"
        assert module.predict(_Predictor(), None, "a cyst", num_samples=4) == ("predicted", "a cyst", 4)
    finally:
        monkeypatch.delitem(sys.modules, "spaces")
        importlib.reload(zerogpu)


def test_the_service_predicts_through_the_gpu_entry_point(on_zerogpu, tmp_path, small_tiny_predictor):
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore

    _, fake = on_zerogpu  # reloaded in place: the service's module reference sees the decorated calls
    store = AnnotationStore(tmp_path / "a.db")
    service = AnnotationService(store, predictor=small_tiny_predictor, num_samples=2)
    try:
        image = (np.random.default_rng(0).random((32, 40, 3)) * 255).astype(np.uint8)
        result = service.segment(image, "a round lesion", add_to_queue=False)
        assert fake.asked == [("predict", zerogpu.image_seconds(None, None, None, num_samples=2))]
        assert result.prediction.num_samples == 2
    finally:
        service.close()
        store.close()
