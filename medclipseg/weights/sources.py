"""Where weights and tokenizer files come from: local paths, `hf://` and `package://` sources.

    /path/to/file.pth                         a local file
    hf://<owner>/<repo>/<path-in-repo>        a file of a Hugging Face model repository, cached
    hf://<owner>/<repo>@<revision>/<path>     the same at a revision
    package://<python_package>/<path>         a file inside an installed package (offline)

`hf://` never hangs: with HF_HUB_OFFLINE=1, or when the hub cannot be reached within a few
seconds, only the local cache is used, and a missing file raises WeightsSourceError.

The shipped assets (demo weights, example images) are found by ``assets_dir()``.
"""
from __future__ import annotations

import hashlib
import importlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from medclipseg import settings

HUB_PROBE_TIMEOUT_S = 3.0
ASSETS_MARKER = Path("demo-tiny") / "config.json"


class WeightsSourceError(RuntimeError):
    """A weights or tokenizer source could not be resolved to a local file."""


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str
    revision: Optional[str] = None


def parse_hf_uri(uri: str) -> HubFile:
    if not uri.startswith("hf://"):
        raise WeightsSourceError(f"not an hf:// source: {uri!r}")
    parts = uri[len("hf://"):].split("/")
    if len(parts) < 3 or not all(parts):
        raise WeightsSourceError(f"expected hf://<owner>/<repo>/<path-in-repo>, got {uri!r}")
    owner, repo = parts[0], parts[1]
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        if not repo or not revision:
            raise WeightsSourceError(f"expected hf://<owner>/<repo>@<revision>/<path-in-repo>, got {uri!r}")
    return HubFile(f"{owner}/{repo}", "/".join(parts[2:]), revision)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """A quick TCP probe of the hub endpoint, so that no download starts its slow retries."""
    endpoint = settings.hub_endpoint()
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def download_hub_file(uri: str) -> Path:
    from huggingface_hub import hf_hub_download

    hub_file = parse_hf_uri(uri)
    offline_setting = settings.hub_offline()
    offline = offline_setting or not hub_reachable()
    try:
        path = hf_hub_download(
            hub_file.repo_id,
            hub_file.filename,
            revision=hub_file.revision,
            local_files_only=offline,
            etag_timeout=10,
        )
    except Exception as exc:
        reason = "the hub is offline (HF_HUB_OFFLINE=1)" if offline_setting else (
            "the hub cannot be reached" if offline else f"the download failed ({type(exc).__name__}: {exc})"
        )
        raise WeightsSourceError(
            f"could not fetch {uri}: {reason} and the file is not in the local Hugging Face cache. "
            "Download it where a network exists (it is cached under HF_HOME), or pass a local path."
        ) from exc
    return Path(path)


def package_file(uri: str) -> Path:
    rest = uri[len("package://"):]
    package, _, inner = rest.partition("/")
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise WeightsSourceError(f"{uri}: package {package!r} is not installed") from exc
    base = Path(module.__file__).resolve().parent
    # Packages that ship a model keep it under a `model/` folder; accept both forms.
    for candidate in (base / inner, base / "model" / inner):
        if candidate.exists():
            return candidate
    raise WeightsSourceError(f"{uri}: no file {inner!r} in package {package!r}")


def resolve_file(source) -> Path:
    """Resolve a source (path, hf://, package://) to an existing local file or folder."""
    text = str(source)
    if text.startswith("hf://"):
        return download_hub_file(text)
    if text.startswith("package://"):
        return package_file(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise WeightsSourceError(f"weights source {text!r} does not exist")
    return path


def sha256_of(path) -> str:
    """Hex sha256 of a file's bytes (what `sha256sum` prints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def assets_dir() -> Path:
    """The shipped assets: the package `medclipseg.assets` of an installed wheel, else the
    repository's top-level assets/ (a checkout or an editable install)."""
    package = Path(__file__).resolve().parents[1]
    candidates = (package / "assets", package.parent / "assets")
    for candidate in candidates:
        if (candidate / ASSETS_MARKER).is_file():
            return candidate
    return candidates[-1]
