"""Every environment variable the package and the app read, in one place.

Each setting is a function, not a constant, so that a value set after import (a test, a
notebook, a Space's secrets) still counts. Command-line options, where a command has one,
win over these.

| variable | what it sets | default |
|---|---|---|
| ``MEDCLIPSEG_WEIGHTS`` | model source of the app and of ``Predictor.from_pretrained()`` | ``demo`` (shipped, offline) |
| ``MEDCLIPSEG_DB`` | the annotation database: an SQLite file (on a local disk: never in a mounted bucket) or a ``postgresql://user:password@host:5432/database`` URL for a team (medclipseg.annotation.sql) | ``feedback_db/annotations.db`` |
| ``MEDCLIPSEG_FILES_DIR`` | folder of the images, maps and masks of a PostgreSQL database (an SQLite file keeps them in ``<stem>_files`` beside it); every server of the team must see the same folder | ``feedback_db/<database name>_files`` |
| ``MEDCLIPSEG_SNAPSHOT_DIR`` | where snapshots of an SQLite database go, restored from at boot: a folder that outlives the machine (a mounted bucket; medclipseg.annotation.snapshots) or a Hub dataset, ``hf://datasets/<owner>/<name>[/<folder>]``, written with ``HF_TOKEN`` (medclipseg.annotation.hub_snapshots) | ``/data/medclipseg`` on a Space with a writable ``/data``, else none |
| ``MEDCLIPSEG_SNAPSHOT_SECONDS`` | seconds between snapshots (at most this much acknowledged work can be lost) | 300 |
| ``MEDCLIPSEG_AUTH`` | app logins and roles, ``user:password[:role]`` separated by commas; role ``annotator`` (default), ``reviewer`` or ``admin`` (medclipseg.team.access) | no login: open, everyone an admin |
| ``MEDCLIPSEG_ALLOW_NO_LOGIN`` | ``1``: start without logins although the app listens beyond 127.0.0.1 (refused otherwise) | unset |
| ``MEDCLIPSEG_SAMPLES`` | Monte-Carlo samples per segmentation in the app | 30 |
| ``MEDCLIPSEG_VOLUME_SAMPLES`` | Monte-Carlo samples per slice when a volume is segmented | 8 |
| ``MEDCLIPSEG_PRECISION`` | the app's model arithmetic: ``auto`` (bf16 on a CPU that multiplies bfloat16 in hardware, fp32 elsewhere), ``fp32``, ``bf16`` or ``fp16`` (GPU); see ``medclipseg.inference.acceleration`` | auto |
| ``MEDCLIPSEG_MAX_PIXELS`` | largest accepted image, width x height | 100,000,000 |
| ``MEDCLIPSEG_MAX_VOLUME_VOXELS`` | largest accepted volume, in voxels (checked on the header, before decoding) | 400,000,000 |
| ``MEDCLIPSEG_MAX_VOLUME_SIDE`` | most voxels along any one side of a volume (slices included) | 1,500 |
| ``MEDCLIPSEG_MAX_VOLUME_BYTES`` | largest accepted volume file or DICOM upload, in bytes (also any image file, and a multi-frame DICOM's decoded pixels, from its header) | 2,000,000,000 |
| ``MEDCLIPSEG_CACHE_MB`` | megabytes the server's in-memory caches may hold together, split by ``CACHE_SHARES`` (predictions, loaded volumes, volume work, predicted volume masks); refused in words unless a positive number | 2,048 |
| ``MEDCLIPSEG_QUEUE_ORDER`` | the review queue's order in the app and the API's ``next_case`` (a name of ``medclipseg.annotation.queue.ACQUISITIONS``) | the study's choice, ``queue.DEFAULT_ACQUISITION`` |
| ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` | where the app listens | 127.0.0.1 / 7860 |
| ``SPACE_ID`` | set by Hugging Face Spaces; turns on snapshots into ``/data`` | unset |
| ``HF_HUB_OFFLINE`` | ``1``: ``hf://`` sources use the local cache only | unset |
| ``HF_ENDPOINT`` | the hub's address for ``hf://`` sources and snapshots | ``https://huggingface.co`` |
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

WEIGHTS_ENV = "MEDCLIPSEG_WEIGHTS"
DB_ENV = "MEDCLIPSEG_DB"
FILES_DIR_ENV = "MEDCLIPSEG_FILES_DIR"
SNAPSHOT_DIR_ENV = "MEDCLIPSEG_SNAPSHOT_DIR"
SNAPSHOT_SECONDS_ENV = "MEDCLIPSEG_SNAPSHOT_SECONDS"
DEFAULT_SNAPSHOT_SECONDS = 300
AUTH_ENV = "MEDCLIPSEG_AUTH"
ALLOW_NO_LOGIN_ENV = "MEDCLIPSEG_ALLOW_NO_LOGIN"
SAMPLES_ENV = "MEDCLIPSEG_SAMPLES"
VOLUME_SAMPLES_ENV = "MEDCLIPSEG_VOLUME_SAMPLES"
PRECISION_ENV = "MEDCLIPSEG_PRECISION"
MAX_PIXELS_ENV = "MEDCLIPSEG_MAX_PIXELS"
QUEUE_ORDER_ENV = "MEDCLIPSEG_QUEUE_ORDER"
MAX_VOLUME_VOXELS_ENV = "MEDCLIPSEG_MAX_VOLUME_VOXELS"
MAX_VOLUME_SIDE_ENV = "MEDCLIPSEG_MAX_VOLUME_SIDE"
MAX_VOLUME_BYTES_ENV = "MEDCLIPSEG_MAX_VOLUME_BYTES"
CACHE_MB_ENV = "MEDCLIPSEG_CACHE_MB"

DEFAULT_WEIGHTS = "demo"
DEFAULT_SAMPLES = 30
# Per slice: 300 slices x 30 samples would keep a CPU busy for many minutes.
DEFAULT_VOLUME_SAMPLES = 8
DEFAULT_MAX_PIXELS = 100_000_000
# 400 M voxels: a 512 x 512 x 1,500 CT (1.6 GB as float32) passes, 2048 x 2048 x 1000 does not.
DEFAULT_MAX_VOLUME_VOXELS = 400_000_000
DEFAULT_MAX_VOLUME_SIDE = 1_500
DEFAULT_MAX_VOLUME_BYTES = 2_000_000_000
# 2 GB: a 100 MP prediction (1.3 GB) is not kept, two 512 x 512 x 300 CTs (310 MB each) are.
DEFAULT_CACHE_MB = 2048
# How the cache budget is split. Predictions are re-read from disk when evicted; a loaded volume is
# the slowest to read again; volume work is also kept as a draft, so evicting it loses only its undo
# history.
CACHE_SHARES = {"predictions": 0.375, "volumes": 0.375, "volume_work": 0.125, "volume_masks": 0.125}
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_HF_ENDPOINT = "https://huggingface.co"

# The repository checkout's folder for the database; a wheel install has none beside the package,
# so it falls back to the current directory.
_REPOSITORY_ROOT = Path(__file__).resolve().parent.parent


def _text(name: str) -> Optional[str]:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _positive_int(name: str, default: int) -> int:
    raw = _text(name)
    if raw is None:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        return default
    return value if value > 0 else default


def weights_source() -> str:
    """The model the app and ``Predictor.from_pretrained()`` load: MEDCLIPSEG_WEIGHTS or the demo."""
    return _text(WEIGHTS_ENV) or DEFAULT_WEIGHTS


def on_hf_space() -> bool:
    return _text("SPACE_ID") is not None


def _feedback_dir() -> Path:
    return (_REPOSITORY_ROOT if (_REPOSITORY_ROOT / "feedback_db").is_dir() else Path.cwd()) / "feedback_db"


def db_location():
    """MEDCLIPSEG_DB as given: a ``postgresql://`` URL (str) or an SQLite file (Path); else the default
    file (db_path())."""
    configured = _text(DB_ENV)
    if configured and "://" in configured:
        return configured
    return db_path()


def db_path() -> Path:
    """The SQLite file: MEDCLIPSEG_DB; else feedback_db/ (the checkout's, or the current directory's).
    On a Space too: the live database stays on the container's disk and is snapshotted into the
    bucket (snapshot_target)."""
    configured = _text(DB_ENV)
    if configured and "://" not in configured:
        return Path(configured).expanduser()
    return _feedback_dir() / "annotations.db"


def files_dir(database_name: str) -> Path:
    """The files folder of a PostgreSQL database: MEDCLIPSEG_FILES_DIR, else feedback_db/<name>_files."""
    configured = _text(FILES_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return _feedback_dir() / f"{database_name}_files"


def snapshot_target() -> Optional[Union[Path, str]]:
    """MEDCLIPSEG_SNAPSHOT_DIR: a folder, or an ``hf://datasets/<owner>/<name>[/<folder>]`` address (kept as
    text); else /data/medclipseg on a Space whose /data is mounted and writable; else None."""
    configured = _text(SNAPSHOT_DIR_ENV)
    if configured and configured.startswith("hf://"):
        return configured
    if configured:
        return Path(configured).expanduser()
    data = Path("/data")
    if on_hf_space() and data.is_dir() and os.access(data, os.W_OK):
        return data / "medclipseg"
    return None


def snapshot_seconds() -> int:
    return _positive_int(SNAPSHOT_SECONDS_ENV, DEFAULT_SNAPSHOT_SECONDS)


def auth_setting() -> Optional[str]:
    """The raw MEDCLIPSEG_AUTH value (parsed by the app, which explains a malformed one)."""
    return _text(AUTH_ENV)


def allow_no_login() -> bool:
    """MEDCLIPSEG_ALLOW_NO_LOGIN=1 (or true/yes): an open app may listen beyond this machine."""
    return (_text(ALLOW_NO_LOGIN_ENV) or "").lower() in ("1", "true", "yes")


def app_samples() -> int:
    return _positive_int(SAMPLES_ENV, DEFAULT_SAMPLES)


def volume_samples() -> int:
    return _positive_int(VOLUME_SAMPLES_ENV, DEFAULT_VOLUME_SAMPLES)


def precision() -> str:
    """MEDCLIPSEG_PRECISION ("auto" unless set); an unknown name is refused in words."""
    raw = (_text(PRECISION_ENV) or "auto").lower()
    known = ("auto", "fp32", "bf16", "fp16")
    if raw not in known:
        raise ValueError(f"{PRECISION_ENV}={raw!r} is not a precision; use one of {', '.join(known)}.")
    return raw


def max_image_pixels() -> int:
    return _positive_int(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)


def max_volume_voxels() -> int:
    return _positive_int(MAX_VOLUME_VOXELS_ENV, DEFAULT_MAX_VOLUME_VOXELS)


def max_volume_side() -> int:
    return _positive_int(MAX_VOLUME_SIDE_ENV, DEFAULT_MAX_VOLUME_SIDE)


def max_volume_file_bytes() -> int:
    return _positive_int(MAX_VOLUME_BYTES_ENV, DEFAULT_MAX_VOLUME_BYTES)


def cache_mb() -> float:
    """MEDCLIPSEG_CACHE_MB, or the default; anything but a positive number is refused in words."""
    raw = _text(CACHE_MB_ENV)
    if raw is None:
        return float(DEFAULT_CACHE_MB)
    try:
        value = float(raw.replace("_", ""))
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{CACHE_MB_ENV}={raw!r} is not a positive number of megabytes "
                         f"(the default is {DEFAULT_CACHE_MB}).")
    return value


def cache_bytes(share: str) -> int:
    """Bytes of one cache: its share (CACHE_SHARES) of MEDCLIPSEG_CACHE_MB."""
    return int(cache_mb() * 1_000_000 * CACHE_SHARES[share])


def queue_order() -> str:
    """MEDCLIPSEG_QUEUE_ORDER, or the default order; an unknown name is refused in words."""
    from medclipseg.annotation.queue import ACQUISITIONS, DEFAULT_ACQUISITION

    name = _text(QUEUE_ORDER_ENV)
    if name is None:
        return DEFAULT_ACQUISITION
    if name not in ACQUISITIONS:
        raise ValueError(f"{QUEUE_ORDER_ENV}={name!r} is not a queue order; use one of {', '.join(ACQUISITIONS)}.")
    return name


def server_host() -> str:
    return _text("GRADIO_SERVER_NAME") or DEFAULT_HOST


def server_port() -> int:
    return _positive_int("GRADIO_SERVER_PORT", DEFAULT_PORT)


def hub_offline() -> bool:
    return (_text("HF_HUB_OFFLINE") or "").lower() in ("1", "true", "yes", "on")


def hub_endpoint() -> str:
    return _text("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT
