"""The package as a user gets it: a wheel installed (not editable) into a fresh venv, used offline.

The fresh venv sees the dev venv's third-party packages through a `.pth` path line (a path line
adds the folder to sys.path without running the `.pth` files inside it, so the dev venv's
editable finder for medclipseg stays inactive) and gets medclipseg only from the wheel.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medclipseg"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Folders under medclipseg/ that the app extra may use beyond the core dependencies.
APP_FOLDERS = ("app",)
# ... and the one the scale extra (Ray) may use.
SCALE_FOLDERS = ("scale",)
# Modules the platform provides where they are used, imported only when present: `spaces` is
# installed by Hugging Face on ZeroGPU Spaces (medclipseg.inference.zerogpu).
PLATFORM_MODULES = {"spaces"}


def _requirement_names(requirements) -> set:
    return {_normalise(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]) for line in requirements}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_imports(paths) -> dict:
    """{top-level module: first file importing it} for imports that are neither stdlib nor ours."""
    found = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in PLATFORM_MODULES:
                    continue
                if top != "medclipseg" and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, path.relative_to(ROOT))
    return found


def _undeclared(imports: dict, declared: set) -> dict:
    distributions = metadata.packages_distributions()
    missing = {}
    for module, where in imports.items():
        names = {_normalise(d) for d in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = str(where)
    return missing


def test_every_import_is_declared():
    project = PYPROJECT["project"]
    core = _requirement_names(project["dependencies"])
    app = core | _requirement_names(project["optional-dependencies"]["app"])
    scale = core | _requirement_names(project["optional-dependencies"]["scale"])
    files = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    in_app = [p for p in files if p.relative_to(PACKAGE).parts[0] in APP_FOLDERS]
    in_scale = [p for p in files if p.relative_to(PACKAGE).parts[0] in SCALE_FOLDERS]
    elsewhere = [p for p in files if p not in in_app and p not in in_scale]
    assert _undeclared(_third_party_imports(elsewhere), core) == {}
    assert _undeclared(_third_party_imports(in_app), app) == {}
    assert _undeclared(_third_party_imports(in_scale), scale) == {}
    assert {"pillow", "torch", "torchvision"} <= core
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(project["dependencies"])


def test_package_list_names_every_package_folder():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = {".".join(("medclipseg",) + p.parent.relative_to(PACKAGE).parts)
               for p in PACKAGE.rglob("*") if p.is_file() and p.suffix in (".py", ".json")
               and "__pycache__" not in p.parts}
    assert folders - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"medclipseg.assets": "assets"}


# -- the installed wheel -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the wheel built from a copy of the tree (no build files in the checkout)."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("medclipseg", "assets"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    str(source), "-w", str(wheels)], check=True, cwd=work)
    wheel = next(wheels.glob("medclipseg-*.whl"))

    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True)

    empty = work / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MEDCLIPSEG_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1", MEDCLIPSEG_DB=str(work / "annotations.db"))

    def run(*args, cwd=empty):
        done = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{args}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
        return done.stdout

    return {"python": str(python), "cli": str(venv / "bin" / "medclipseg"), "site": site, "work": work,
            "empty": empty, "run": run}


def test_import_is_light_and_comes_from_the_wheel(installed):
    code = ("import medclipseg, sys; assert 'torch' not in sys.modules, 'torch imported'; "
            "from medclipseg.weights.sources import assets_dir; import json; "
            "print(json.dumps({'file': medclipseg.__file__, 'assets': str(assets_dir())}))")
    where = json.loads(installed["run"](installed["python"], "-c", code).strip().splitlines()[-1])
    package = installed["site"] / "medclipseg"
    assert Path(where["file"]).parent == package
    assert Path(where["assets"]) == package / "assets"
    assert (package / "assets" / "examples" / "examples.json").is_file()
    # The mask editor runs from the shipped files as they are: nothing to build at install time.
    for name in ("mask_editor.js", "mask_editor.html", "mask_editor.css"):
        shipped = package / "app" / "editor" / name
        assert shipped.read_bytes() == (ROOT / "medclipseg" / "app" / "editor" / name).read_bytes(), name
    assert sorted(p.name for p in installed["empty"].iterdir()) == []


def test_predict_phantoms_and_train_from_the_demo(installed):
    run, cli, work = installed["run"], installed["cli"], installed["work"]
    data = work / "phantoms"
    run(cli, "phantoms", "--out", str(data), "--per-modality", "4", "--seed", "3", "--modalities", "dermoscopy",
        "--target-counts", "0,1,0,0", "--splits", "0.5,0.25,0.25")
    image = sorted((data / "Test_Folder" / "img").glob("*.png"))[0]

    out = installed["empty"] / "out"
    printed = json.loads(run(cli, "predict", "--image", str(image), "--prompt", "a dark lesion on the skin",
                             "--num-samples", "4", "--seed", "0", "--out-dir", str(out)).strip().splitlines()[-1])
    mask = Path(printed["mask"])
    assert mask.is_file() and mask.parent == out

    run(cli, "train", "--data", str(data), "--out", str(work / "run"), "--init", "demo", "--epochs", "1",
        "--batch-size", "2", "--max-steps-per-epoch", "1", "--no-validate", "--device", "cpu")
    assert (work / "run" / "last" / "model.safetensors").is_file()
