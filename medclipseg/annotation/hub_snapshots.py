"""Snapshots of an annotation database into a Hugging Face Hub dataset repository.

The other place a Space's state can outlive a restart (besides a mounted bucket, which
medclipseg.annotation.snapshots writes to as a folder): ``MEDCLIPSEG_SNAPSHOT_DIR=
hf://datasets/<owner>/<name>[@<branch>][/<folder>]``, written with huggingface_hub and the
Space's ``HF_TOKEN``. The repository holds the same layout as a snapshot folder:

``<folder>/snapshots/<db stem>-<UTC time>.db``   consistent copies (SQLite's backup API)
``<folder>/files/...``                          the files beside the database, each uploaded once

One snapshot is one commit: the new files, the database copy and the removal of copies past
``keep``, so the repository never holds a copy without the files it names (files a row names
are written before the row commits, and the copy is made before the files are listed). When
there are more new files than one commit should carry, they go first in commits of their own.
Older copies stay in the repository's git history.

At boot, :func:`restore` reads one commit of the repository (pinned, so that a snapshot made
meanwhile cannot mix in), takes its newest readable copy and downloads the files. A Hub that
cannot be reached is an error in words, never an empty start: an empty database snapshotted
over the real ones would push them out after ``keep`` intervals.
"""
from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from medclipseg import settings
from medclipseg.annotation.errors import StorageError

SCHEME = "hf://datasets/"
# Files per commit: the Hub advises against commits of many thousands of files.
FILES_PER_COMMIT = 1000
DOWNLOAD_THREADS = 8


@dataclass(frozen=True)
class HubDataset:
    """Where snapshots go: a dataset repository, a branch and a folder inside it."""

    repo_id: str
    revision: str = "main"
    folder: str = ""

    @property
    def uri(self) -> str:
        at = "" if self.revision == "main" else f"@{self.revision}"
        return f"{SCHEME}{self.repo_id}{at}" + (f"/{self.folder}" if self.folder else "")

    def path_in_repo(self, *parts: str) -> str:
        return "/".join(part for part in (self.folder, *parts) if part)


def is_hub_target(where) -> bool:
    return isinstance(where, str) and where.startswith("hf://")


def parse_target(uri: str) -> HubDataset:
    """``hf://datasets/owner/name[@branch][/folder]``; ValueError in words for anything else."""
    if not uri.startswith(SCHEME):
        raise ValueError(f"{uri!r} is not a Hub dataset: snapshots go to hf://datasets/<owner>/<name>[/<folder>] "
                         "(a dataset repository, not a model), or to a folder.")
    parts = [part for part in uri[len(SCHEME):].split("/") if part]
    if len(parts) < 2:
        raise ValueError(f"{uri!r} names no repository: write hf://datasets/<owner>/<name>.")
    owner, name = parts[0], parts[1]
    revision = "main"
    if "@" in name:
        name, revision = name.split("@", 1)
        if not revision:
            raise ValueError(f"{uri!r} has an empty branch after '@'.")
    if any(part in (".", "..") for part in parts) or not owner or not name:
        raise ValueError(f"{uri!r} is not a valid Hub dataset path.")
    return HubDataset(repo_id=f"{owner}/{name}", revision=revision, folder="/".join(parts[2:]))


def _api():
    from huggingface_hub import HfApi

    return HfApi(endpoint=settings.hub_endpoint())


def _check_reachable(target: HubDataset) -> None:
    from medclipseg.weights.sources import hub_reachable

    if settings.hub_offline():
        raise StorageError(f"Snapshots go to {target.uri}, but the Hub is offline (HF_HUB_OFFLINE=1).")
    if not hub_reachable():
        raise StorageError(f"Snapshots go to {target.uri}, but the Hub ({settings.hub_endpoint()}) cannot be "
                           "reached.")


def _hub_error(action: str, target: HubDataset, exc: Exception) -> StorageError:
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    hint = ""
    if "401" in detail or "403" in detail:
        hint = " Set HF_TOKEN to a token with write access to the repository."
    return StorageError(f"Could not {action} {target.uri}: {detail}.{hint}")


def _listed(api, target: HubDataset, revision: str) -> dict:
    """{path in repo: size} of the files under the target's folder at `revision`."""
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.hf_api import RepoFile

    try:
        listed = api.list_repo_tree(target.repo_id, path_in_repo=target.folder or None, recursive=True,
                                    repo_type="dataset", revision=revision)
        return {entry.path: entry.size for entry in listed if isinstance(entry, RepoFile)}
    except EntryNotFoundError:  # the folder is not there yet
        return {}


def take_snapshot(db_path, target: HubDataset, *, keep: int):
    """One snapshot of the database at `db_path` and its new files, committed to `target`."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    from medclipseg.annotation import snapshots

    started = time.perf_counter()
    db_path = Path(db_path)
    if not db_path.is_file():
        raise StorageError(f"There is no annotation database at {db_path} to snapshot.")
    _check_reachable(target)
    api = _api()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    local_copy = db_path.parent / f".{db_path.stem}-{stamp}.snapshot"
    try:
        api.create_repo(target.repo_id, repo_type="dataset", private=True, exist_ok=True)
        present = _listed(api, target, target.revision)
        snapshots.backup(db_path, local_copy)
        files_dir = snapshots.files_dir_of(db_path)
        new_files = [(path, relative) for path, relative in snapshots.files_to_mirror(files_dir)
                     if present.get(target.path_in_repo(snapshots.FILES, relative.as_posix())) != path.stat().st_size]
        additions = [CommitOperationAdd(path_in_repo=target.path_in_repo(snapshots.FILES, relative.as_posix()),
                                        path_or_fileobj=str(path)) for path, relative in new_files]
        while len(additions) > FILES_PER_COMMIT:
            batch, additions = additions[:FILES_PER_COMMIT], additions[FILES_PER_COMMIT:]
            api.create_commit(target.repo_id, batch, commit_message=f"Files of {db_path.name} (snapshot {stamp})",
                              repo_type="dataset", revision=target.revision)
        name = target.path_in_repo(snapshots.SNAPSHOTS, f"{db_path.stem}-{stamp}.db")
        prefix = target.path_in_repo(snapshots.SNAPSHOTS, f"{db_path.stem}-")
        older = sorted((path for path in present if path.startswith(prefix) and path.endswith(".db")), reverse=True)
        deletions = [CommitOperationDelete(path_in_repo=path) for path in older[max(1, int(keep)) - 1:]]
        api.create_commit(target.repo_id, [*additions, CommitOperationAdd(path_in_repo=name,
                                                                          path_or_fileobj=str(local_copy)),
                                           *deletions],
                          commit_message=f"Snapshot of {db_path.name} at {stamp}", repo_type="dataset",
                          revision=target.revision)
    except StorageError:
        raise
    except Exception as exc:  # huggingface_hub's HTTP and repository errors, OSError
        raise _hub_error("snapshot the annotation database into", target, exc) from exc
    finally:
        local_copy.unlink(missing_ok=True)
    return snapshots.Snapshot(path=f"{SCHEME}{target.repo_id}/{name}", seconds=time.perf_counter() - started,
                              files_copied=len(new_files))


def restore(db_path, target: HubDataset) -> Optional[str]:
    """Put the newest readable snapshot in `target` at `db_path` (missing), with its files; returns the
    snapshot's address, or None when the repository holds no snapshot of this database (or does not exist)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError

    from medclipseg.annotation import snapshots

    db_path = Path(db_path)
    if db_path.exists():
        return None
    _check_reachable(target)
    api = _api()
    staging = db_path.parent / f".{db_path.stem}.hub-restore"
    try:
        try:
            commit = api.dataset_info(target.repo_id, revision=target.revision).sha
        except RepositoryNotFoundError:
            return None  # nothing was ever snapshotted there
        present = _listed(api, target, commit)
        prefix = target.path_in_repo(snapshots.SNAPSHOTS, f"{db_path.stem}-")
        candidates = sorted((path for path in present if path.startswith(prefix) and path.endswith(".db")),
                            reverse=True)
        if not candidates:
            return None
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)

        def download(path_in_repo: str) -> Path:
            return Path(hf_hub_download(target.repo_id, path_in_repo, repo_type="dataset", revision=commit,
                                        local_dir=staging, endpoint=settings.hub_endpoint()))

        chosen = None
        for candidate in candidates:
            copy = download(candidate)
            if snapshots.readable(copy):
                chosen = (candidate, copy)
                break
        if chosen is None:
            return None
        files_prefix = target.path_in_repo(snapshots.FILES) + "/"
        wanted = [path for path in present if path.startswith(files_prefix)]
        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            list(pool.map(download, wanted))
        db_path.parent.mkdir(parents=True, exist_ok=True)
        files_dir = snapshots.files_dir_of(db_path)
        snapshots.mirror(staging / files_prefix, files_dir, move=True)
        partial = db_path.with_name(f".{db_path.name}.restoring")
        shutil.move(str(chosen[1]), partial)
        snapshots.drop_drafts_without_files(partial, files_dir)
        partial.replace(db_path)
        return f"{SCHEME}{target.repo_id}/{chosen[0]}"
    except StorageError:
        raise
    except Exception as exc:
        raise _hub_error("restore the annotation database from", target, exc) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
