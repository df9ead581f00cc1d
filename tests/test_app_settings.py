"""app.py's settings: logins from MEDCLIPSEG_AUTH, the examples list, start-up errors."""
import subprocess
import sys

import pytest

from app_support import ROOT


@pytest.fixture(scope="module")
def app_module():
    from types import SimpleNamespace

    from medclipseg.app.handlers import load_examples

    return SimpleNamespace(load_examples=load_examples)


def test_examples_exist_with_prompts(app_module):
    examples = app_module.load_examples()
    assert len(examples) == 5
    for path, prompt in examples:
        assert (ROOT / "assets" / "examples").joinpath(path).exists() and len(prompt) > 20


@pytest.mark.parametrize("setting, value, message", [
    ("MEDCLIPSEG_AUTH", "nopassword", "MEDCLIPSEG_AUTH: entry 1 (nopassword) is not user:password"),
    ("MEDCLIPSEG_AUTH", "ann:pw1,rev:pw2:boss", "user 'rev' has the unknown role 'boss'"),
    ("MEDCLIPSEG_AUTH", "ann:pw1,rev::reviewer", "user 'rev' has an empty password"),
    ("MEDCLIPSEG_AUTH", "ann:pw1,ann:pw2:admin", "user 'ann' is named twice"),
    ("MEDCLIPSEG_SAMPLES", "100000", "number of samples must lie between 1 and 64"),
    ("MEDCLIPSEG_QUEUE_ORDER", "loudest_first", "MEDCLIPSEG_QUEUE_ORDER='loudest_first' is not a queue order"),
    ("MEDCLIPSEG_CACHE_MB", "-5", "MEDCLIPSEG_CACHE_MB='-5' is not a positive number of megabytes"),
], ids=["bad_login", "unknown_role", "empty_password", "duplicate_user", "too_many_samples",
       "unknown_queue_order", "negative_cache"])
def test_bad_setting_stops_with_a_clear_message(tmp_path, setting, value, message):
    env = {setting: value, "MEDCLIPSEG_DB": str(tmp_path / "a.db"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(ROOT / "app.py")], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert message in result.stderr
    assert "pw1" not in result.stderr and "pw2" not in result.stderr  # passwords are never printed
    assert not (tmp_path / "a.db").exists()


def test_an_open_server_beyond_this_machine_does_not_start_unless_asked(tmp_path):
    env = {"MEDCLIPSEG_DB": str(tmp_path / "a.db"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(ROOT / "app.py"), "--host", "0.0.0.0", "--port", "1"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "would listen on 0.0.0.0, beyond this machine, with no login" in result.stderr
    assert "MEDCLIPSEG_AUTH" in result.stderr and "MEDCLIPSEG_ALLOW_NO_LOGIN=1" in result.stderr
    assert not (tmp_path / "a.db").exists()


def test_importing_the_app_package_does_not_import_gradio():
    code = "import medclipseg.app, sys; assert 'gradio' not in sys.modules, 'gradio imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(ROOT), timeout=120)


def test_queue_order_setting(monkeypatch):
    from medclipseg import settings
    from medclipseg.annotation.queue import DEFAULT_ACQUISITION

    monkeypatch.delenv("MEDCLIPSEG_QUEUE_ORDER", raising=False)
    assert settings.queue_order() == DEFAULT_ACQUISITION
    monkeypatch.setenv("MEDCLIPSEG_QUEUE_ORDER", " band_entropy ")
    assert settings.queue_order() == "band_entropy"


@pytest.mark.parametrize("url, message", [
    ("postgresql://annot:pw1@127.0.0.1:1/project", "Could not connect to the PostgreSQL database "
                                                   "postgresql://annot:***@127.0.0.1:1/project"),
    ("postgresql://annot:pw1@127.0.0.1:5432", "names no database"),
    ("mysql://annot:pw1@127.0.0.1/project", "neither an SQLite file nor a PostgreSQL URL"),
], ids=["unreachable", "no_database", "other_engine"])
def test_a_wrong_database_url_stops_the_start_in_words(tmp_path, url, message):
    env = {"MEDCLIPSEG_DB": url, "MEDCLIPSEG_FILES_DIR": str(tmp_path / "files"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(ROOT / "app.py")], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert "app.py: error:" in result.stderr and message in result.stderr
    assert "pw1" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "files").exists()
