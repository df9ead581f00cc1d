"""Review queue: bulk ingest of images into the annotation store, ordered for active learning.

``ingest`` reads every image of a folder or a .zip archive, runs the model once on it (Monte-Carlo
maps and image-level uncertainty scores) and stores it as a case with its prompt and prediction.
``AnnotationStore.next_case`` then serves the unreviewed cases most uncertain first, by one of the
scores in ``medclipseg.annotation.queue.ACQUISITION_SCORES`` (or in random order, the baseline to
compare with).

A file that cannot be read (corrupt, not an image, too large, no prompt) or that the model fails
on (e.g. out of memory) is reported and skipped; the other files go on. Each image is predicted
before it is stored, and stored together with its prediction. Ingesting the same folder again adds
nothing: an image already in the store with the same prompt and a prediction counts as a duplicate.
"""
from __future__ import annotations

import csv
import os
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Mapping, Optional, Union

from medclipseg.annotation.store import content_hash
from medclipseg.io.images import IMAGE_SUFFIXES, ImageReadError, read_image
from medclipseg.io.prompts import PromptError, validate_prompt
from medclipseg.io.volumes import VolumeReadError, is_nifti_name

MAX_ARCHIVE_MEMBERS = 10000
MAX_MEMBER_BYTES = 512 * 1024 * 1024
# How many failed files the one-line summary names before "and N more".
SUMMARY_FAILURES = 5

ProgressCallback = Callable[[int, int, str], None]


@dataclass
class SourceFile:
    """One image file of a folder or archive; `read()` returns its bytes (size-checked)."""

    name: str  # relative path with '/' separators, used as a label only (never to write files)
    size: int
    _read: Callable[[], bytes] = field(repr=False)
    # Where the bytes are, as plain values another process can read them from (read_located): the
    # Ray engine's workers read files themselves. ("file", path) or ("zip", archive path, member).
    locator: tuple = ()

    def read(self) -> bytes:
        if self.size > MAX_MEMBER_BYTES:
            raise ImageReadError(_too_large(self.name, self.size))
        return self._read()


def read_located(locator: tuple, name: str) -> bytes:
    """The bytes a SourceFile's locator names, under the same limits as SourceFile.read."""
    if locator[0] == "file":
        path = Path(locator[1])
        try:
            size = path.stat().st_size
            if size > MAX_MEMBER_BYTES:
                raise ImageReadError(_too_large(name, size))
            return path.read_bytes()
        except OSError as exc:
            raise ImageReadError(f"{name} could not be read ({exc.strerror or exc}).") from exc
    if locator[0] == "zip":
        try:
            with zipfile.ZipFile(locator[1]) as archive:
                return _read_member(archive, archive.getinfo(locator[2]), name)
        except (zipfile.BadZipFile, OSError, KeyError) as exc:
            raise ImageReadError(f"{name} could not be read from its archive ({exc}).") from exc
    raise ValueError(f"unknown file locator {locator!r}")


def _too_large(name: str, size: int) -> str:
    return (f"{name} is too large ({size / 2**20:,.0f} MiB); files above "
            f"{MAX_MEMBER_BYTES // 2**20} MiB are refused.")


def _skipped(parts) -> bool:
    """Hidden files/folders (macOS '._x', '.DS_Store', ...) and macOS archive metadata."""
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) or is_nifti_name(name)


def _is_listed(name: str, peek: Callable[[], bytes]) -> bool:
    """Images, NIfTI files, and files without a suffix that carry DICOM's magic (series are often
    written as IM0001, IM0002, ... without one)."""
    if _is_image_name(name):
        return True
    if "." in PurePosixPath(name).name:
        return False
    try:
        head = peek()
    except Exception:
        return False
    return len(head) >= 132 and head[128:132] == b"DICM"


def _is_dicom_item(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith((".dcm", ".dicom")) or "." not in PurePosixPath(name).name


def _folder_files(root: Path) -> list:
    files = []
    for directory, subdirs, names in os.walk(root):  # symlinked folders are not followed
        subdirs[:] = [d for d in subdirs if not _skipped([d])]
        for name in names:
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if _skipped([name]) or not path.is_file() or not _is_listed(name, lambda p=path: _head(p)):
                continue
            files.append(SourceFile(relative, path.stat().st_size, path.read_bytes, ("file", str(path.resolve()))))
    return sorted(files, key=lambda item: item.name)


def _head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(132)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> bytes:
    try:
        with archive.open(info) as handle:
            # Read at most one byte past the limit: the header's size may lie (zip bombs).
            data = handle.read(MAX_MEMBER_BYTES + 1)
    except RuntimeError as exc:  # encrypted member
        raise ImageReadError(f"{name} could not be extracted from the archive ({exc}).") from exc
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise ImageReadError(f"{name} is damaged in the archive and could not be extracted ({exc}).") from exc
    if len(data) > MAX_MEMBER_BYTES:
        raise ImageReadError(_too_large(name, len(data)))
    return data


def _archive_files(path: Path) -> list:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path} is not a readable .zip archive ({exc}).") from exc
    files = []
    for info in archive.infolist():
        # Member names are only labels: nothing is ever written to a path taken from the archive.
        name = info.filename.replace("\\", "/")
        parts = [part for part in PurePosixPath(name).parts if part not in ("/", "..", ".")]
        if info.is_dir() or not parts or _skipped(parts):
            continue
        if not _is_listed(name, lambda info=info: archive.open(info).read(132)):
            continue
        files.append(SourceFile("/".join(parts), info.file_size,
                                lambda info=info, label="/".join(parts): _read_member(archive, info, label),
                                ("zip", str(path.resolve()), info.filename)))
    if len(files) > MAX_ARCHIVE_MEMBERS:
        archive.close()
        raise ValueError(f"{path.name} holds {len(files):,} images; archives are limited to "
                         f"{MAX_ARCHIVE_MEMBERS:,}. Split it into smaller archives.")
    return sorted(files, key=lambda item: item.name)


def scan_source(source: Union[str, os.PathLike]) -> list:
    """The image files (SourceFile, sorted by name) of a folder or .zip archive, nothing read yet.

    Raises ValueError when the source is missing, is neither a folder nor a .zip, or holds no image.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise ValueError(f"{path} does not exist; give a folder of images or a .zip archive.")
    if path.is_dir():
        files = _folder_files(path)
    elif path.is_file() and zipfile.is_zipfile(path):
        files = _archive_files(path)
    else:
        raise ValueError(f"{path} is neither a folder nor a .zip archive.")
    if not files:
        raise ValueError(f"{path} holds no images or scans (looked for {', '.join(IMAGE_SUFFIXES)}, .nii, .nii.gz "
                         "and DICOM files).")
    return files


def iter_sources(source) -> Iterator[tuple]:
    """(relative name, file bytes) for every image of a folder or .zip archive, sorted by name.

    Hidden files and __MACOSX are skipped, other file types ignored. ValueError when the source is
    missing, not a folder/zip or holds no image; ImageReadError (a ValueError) for a file above
    MAX_MEMBER_BYTES (``ingest`` instead records such a file as failed and goes on).
    """
    for item in scan_source(source):
        yield item.name, item.read()


def _normalise_name(name: str) -> str:
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def read_prompt_csv(path) -> dict:
    """{image name: prompt} from a CSV with columns 'image' and 'prompt' (or the authors' 'Image' and
    'Description'); headers are matched ignoring case and spaces. Each prompt is found under the
    image's relative name and under its base name (unless two rows share a base name)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"Prompt file {path} does not exist.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"Could not read the prompt file {path.name} ({exc}); save it as a UTF-8 CSV.") from exc
    if not rows:
        raise ValueError(f"Prompt file {path.name} is empty; it needs columns 'image' and 'prompt'.")
    header = ["".join(cell.split()).lower() for cell in rows[0]]
    prompt_column = next((c for c in ("prompt", "description") if c in header), None)
    if "image" not in header or prompt_column is None:
        found = ", ".join(repr(cell) for cell in rows[0]) or "none"
        raise ValueError(f"Prompt file {path.name} needs columns 'image' and 'prompt' (or 'Image' and "
                         f"'Description'); found {found}.")
    image_index, prompt_index = header.index("image"), header.index(prompt_column)
    by_name: dict = {}
    first_row: dict = {}
    empty, conflicts = [], []
    for number, row in enumerate(rows[1:], start=2):  # row numbers as a spreadsheet shows them
        if not any(cell.strip() for cell in row):
            continue
        image = _normalise_name(row[image_index]) if image_index < len(row) else ""
        prompt = row[prompt_index].strip() if prompt_index < len(row) else ""
        if not image or not prompt:
            empty.append(number)
            continue
        if image in by_name and by_name[image] != prompt:
            conflicts.append(f"{image} (rows {first_row[image]} and {number})")
            continue
        by_name.setdefault(image, prompt)
        first_row.setdefault(image, number)
    if empty:
        listed = ", ".join(str(n) for n in empty[:20]) + (" ..." if len(empty) > 20 else "")
        raise ValueError(f"Prompt file {path.name}: empty image name or prompt on row(s) {listed}.")
    if conflicts:
        raise ValueError(f"Prompt file {path.name} gives different prompts for the same image: "
                         f"{'; '.join(conflicts[:10])}.")
    if not by_name:
        raise ValueError(f"Prompt file {path.name} has no prompt rows.")
    prompts = dict(by_name)
    base_names: dict = {}
    for image, prompt in by_name.items():
        base_names.setdefault(PurePosixPath(image).name, set()).add(prompt)
    for base, found in base_names.items():
        if len(found) == 1:  # an ambiguous base name would pick an arbitrary prompt
            prompts.setdefault(base, next(iter(found)))
    return prompts


def _prompt_for(name: str, prompt: Optional[str], prompts) -> str:
    """The one prompt given to every file, else the prompt file's line for ``name`` (PromptError if none)."""
    if prompt is not None:
        return prompt
    text = _lookup_prompt(prompts, name)
    if text is None:
        raise PromptError(f"no prompt for {name} in the prompt file")
    return validate_prompt(text)


def _lookup_prompt(prompts: Mapping, name: str) -> Optional[str]:
    return prompts.get(name) or prompts.get(PurePosixPath(name).name)


def _plural(number: int, word: str) -> str:
    return f"{number} {word}{'' if number == 1 else 's'}"


@dataclass
class IngestReport:
    added: list = field(default_factory=list)  # case ids predicted in this run
    duplicates: list = field(default_factory=list)  # case ids already predicted by this model, or reviewed
    failed: list = field(default_factory=list)  # (file name, message)
    seconds: float = 0.0
    rescored: list = field(default_factory=list)  # case ids in the queue before, predicted anew by this model
    volumes: list = field(default_factory=list)  # the case ids of `added` and `rescored` that are volumes

    def summary(self) -> str:
        images = len(self.added) - len([case for case in self.volumes if case in self.added])
        parts = [f"{_plural(images, 'image')} added"]
        if self.volumes:
            parts.append(f"{_plural(len(self.volumes), 'volume')} added")
        if self.rescored:
            parts.append(f"{len(self.rescored)} re-scored by this model")
        parts += [f"{len(self.duplicates)} already in the queue",
                 f"{len(self.failed)} failed"]
        text = ", ".join(parts)
        if self.failed:
            named = [f"{name} ({message})" for name, message in self.failed[:SUMMARY_FAILURES]]
            more = len(self.failed) - SUMMARY_FAILURES
            text += ": " + ", ".join(named) + (f", and {more} more" if more > 0 else "")
        return f"{text} ({self.seconds:.1f} s)"


class Ticker:
    """Counts the files (or cases) done and tells ``progress(done, total, message)`` after each."""

    def __init__(self, total: int, progress: Optional[ProgressCallback]):
        self.total, self.progress, self.done = int(total), progress, 0
        self._lock = threading.Lock()  # results may be stored from several threads

    def __call__(self, message: str) -> None:
        with self._lock:
            self.done += 1
            done = self.done
        if self.progress is not None:
            self.progress(done, self.total, message)


def open_source(source, *, prompt: Optional[str], prompts_csv, num_samples: int, threshold: float) -> tuple:
    """The checks every ingest makes before anything is read, then the source's listing:
    (prompt, {name: prompt}, image files, volume jobs, a new IngestReport). ValueError in words."""
    if (prompt is None) == (prompts_csv is None):
        raise ValueError("Give exactly one of a prompt for all images or a CSV file of prompts.")
    if num_samples < 1:
        raise ValueError("num_samples must be at least 1.")
    if not 0.0 < threshold < 1.0:
        raise ValueError("The threshold must lie strictly between 0 and 1.")
    if prompt is not None:
        prompt = validate_prompt(prompt)  # PromptError (a ValueError) for the whole ingest
        prompts: Mapping = {}
    else:
        prompts = prompts_csv if isinstance(prompts_csv, Mapping) else read_prompt_csv(prompts_csv)
    files = scan_source(source)
    report = IngestReport()
    volume_jobs, files = _volume_jobs(files, report)
    return prompt, prompts, files, volume_jobs, report


def ingest(store, predictor, source, *, prompt: Optional[str] = None, prompts_csv=None,
           batch: Optional[str] = None, batch_size: int = 8, num_samples: int = 30, threshold: float = 0.5,
           seed: Optional[int] = 0, progress: Optional[ProgressCallback] = None,
           predict_volume: Optional[Callable] = None) -> IngestReport:
    """Add every image of `source` (folder or .zip) to `store` as a case and predict it.

    Scans become volume cases: each NIfTI file, each multi-frame DICOM with plane positions, and each
    DICOM series (files grouped by series and geometry, medclipseg.io.dicom_series; a localizer or a
    second series is its own case, never merged). A DICOM file alone in its series stays a 2-D
    image. ``predict_volume(volume, prompt, num_samples=, threshold=, seed=)`` predicts a volume
    (medclipseg.inference.volume.predict_volume bound to a predictor); without it scans are
    reported as failed. A CSV prompt names a series by its folder (or the archive's name).

    Exactly one of `prompt` (one prompt for all images) or `prompts_csv` (a CSV path, see
    read_prompt_csv, or an already read {name: prompt} mapping) is required. Files are read and
    decoded `batch_size` at a time and predicted together (``predict_images``: several per forward
    pass where the predictor has ``predict_batch``), each stored with its prediction once predicted
    (a case never exists without one); `progress(done, total, message)` is called after
    each file. Failing files (unreadable, no prompt, a model error) are listed in the report; the
    others go on.
    """
    started = time.perf_counter()
    model_id = str(getattr(predictor, "model_id", "") or "")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    prompt, prompts, files, volume_jobs, report = open_source(source, prompt=prompt, prompts_csv=prompts_csv,
                                                              num_samples=num_samples, threshold=threshold)
    tick = Ticker(len(files) + len(volume_jobs), progress)
    seen: dict = {}  # (content hash, prompt) met in this run -> case id: a file repeated in the source is a duplicate

    for job in volume_jobs:
        _ingest_volume(store, job, prompt=prompt, prompts=prompts, predict_volume=predict_volume, batch=batch,
                       num_samples=num_samples, threshold=threshold, seed=seed, model_id=model_id, report=report,
                       tick=tick)
    for start in range(0, len(files), batch_size):
        pending = []  # (file name, loaded image, prompt) read and decoded, to predict
        for item in files[start:start + batch_size]:
            try:
                text = _prompt_for(item.name, prompt, prompts)
                loaded = read_image(item.read(), name=item.name)
            except (ImageReadError, PromptError) as exc:
                report.failed.append((item.name, str(exc)))
                tick(f"{item.name}: failed: {exc}")
                continue
            pending.append((item.name, loaded, text))
        planned = [(name, loaded, text, plan_image(store, content_hash(loaded.bgr), text, model_id, seen))
                   for name, loaded, text in pending]
        to_predict = [entry for entry in planned if entry[3].predict]
        predictions = predict_images(predictor, [(loaded.bgr, text) for _, loaded, text, _ in to_predict],
                                     num_samples=num_samples, threshold=threshold, seed=seed)
        predicted = {id(entry): result for entry, result in zip(to_predict, predictions)}
        for entry in planned:
            name, loaded, text, plan = entry
            if not plan.predict:
                record_duplicate(store, report, name, text, plan, tick)
                continue
            store_image_result(store, report, name, loaded.bgr, text, predicted[id(entry)], plan,
                               metadata={**loaded.metadata, "conversions": list(loaded.conversions)},
                               batch=batch, seen=seen, tick=tick)
    report.seconds = time.perf_counter() - started
    return report


# --------------------------------------------------------------------------------------
# one image: plan, predict, store (shared by the local and the Ray engines)


@dataclass
class ImagePlan:
    """What to do with one decoded image: predict it (a new case, or a case this model has not
    scored), or count it as a duplicate of ``case_id``."""

    predict: bool
    case_id: Optional[int] = None
    predicted_before: bool = False
    repeat_key: Optional[tuple] = None   # the same pixels and prompt met earlier in this run, not stored yet


def plan_image(store, image_hash: str, text: str, model_id: str, seen: dict) -> ImagePlan:
    """Decide for one image (by its content hash and prompt) before any model runs.

    ``seen`` maps (content hash, prompt) met in this run to their case id (None while not stored
    yet): a file repeated in the source is a duplicate, never predicted twice. A case already in
    the queue is predicted again only by another model, and only while unreviewed.
    """
    key = (image_hash, text)
    if key in seen:
        return ImagePlan(predict=False, case_id=seen[key], repeat_key=key)
    seen[key] = None
    case = store.find_case(prompt=text, image_hash=image_hash)
    predicted_before = case is not None and store.latest_prediction_id(case.id) is not None
    if case is not None and predicted_before and (case.status != "unreviewed"
                                                  or store.has_prediction_by(case.id, model_id)):
        seen[key] = case.id
        return ImagePlan(predict=False, case_id=case.id)
    return ImagePlan(predict=True, predicted_before=predicted_before, repeat_key=key)


def record_duplicate(store, report: IngestReport, name: str, text: str, plan: ImagePlan, tick) -> None:
    case_id = plan.case_id
    if case_id is None and plan.repeat_key is not None:
        # A repeat of a file of this run whose case was stored after the plan was made (or failed).
        found = store.find_case(prompt=text, image_hash=plan.repeat_key[0])
        case_id = None if found is None else found.id
    if case_id is None:
        report.failed.append((name, "the same image with the same prompt failed earlier in this run"))
        tick(f"{name}: failed: the same image failed earlier in this run")
        return
    report.duplicates.append(case_id)
    tick(f"{name}: already in the queue (case {case_id})")


def predict_images(predictor, items: list, *, num_samples: int, threshold: float, seed) -> list:
    """Predictions of (BGR image, prompt) pairs, several per forward pass (Predictor.predict_batch);
    when a batch fails (e.g. out of memory) each image is tried alone, so that one bad image costs
    only itself. Returns a Prediction or the exception for each item, in order."""
    if not items:
        return []
    options = dict(num_samples=num_samples, threshold=threshold, seed=seed, channel_order="bgr")
    batch_call = getattr(predictor, "predict_batch", None)
    if batch_call is not None and len(items) > 1:
        try:
            return list(batch_call(items, **options))
        except Exception:  # fall through: find the image that fails, keep the others
            pass
    results = []
    for bgr, text in items:
        try:
            results.append(predictor.predict(bgr, text, **options))
        except Exception as exc:  # e.g. out of memory on one large image: the other files go on
            results.append(exc)
    return results


def store_image_result(store, report: IngestReport, name: str, bgr, text: str, result, plan: ImagePlan, *,
                       metadata: dict, batch: Optional[str], seen: dict, tick) -> None:
    """Store one predicted image as a case with its prediction, in one transaction (no one, the queue
    or background re-scoring, ever sees the case without one); a failed prediction is reported."""
    if isinstance(result, Exception):
        message = f"the model could not predict it ({type(result).__name__}: {result})"
        report.failed.append((name, message))
        tick(f"{name}: failed: {message}")
        return
    model_id = str(getattr(result, "model_id", "") or "")
    stored = store.find_case(prompt=text, image_hash=plan.repeat_key[0]) if plan.repeat_key else None
    if stored is not None and model_id and store.has_prediction_by(stored.id, model_id):
        # Written already (a batch a worker finished twice after a restart): never twice.
        seen[plan.repeat_key] = stored.id
        report.duplicates.append(stored.id)
        tick(f"{name}: already in the queue (case {stored.id})")
        return
    # Privacy: only the de-identified technical metadata of read_image is passed on.
    case, _ = store.add_case_with_prediction(bgr, result, prompt=text, original_name=name, source="ingest",
                                             batch=batch, metadata=metadata)
    seen[plan.repeat_key] = case.id
    (report.rescored if plan.predicted_before else report.added).append(case.id)
    verb = "re-scored" if plan.predicted_before else "added as"
    tick(f"{name}: {verb} case {case.id} ({result.seconds:.2f} s)")


# --------------------------------------------------------------------------------------
# volumes


@dataclass
class VolumeJob:
    """One scan of the source: a NIfTI file, or the DICOM files of one series."""

    name: str                 # what the report and the prompt table call it
    items: list               # SourceFile
    kind: str                 # "nifti" or "dicom"


def _series_key(item: "SourceFile") -> Optional[tuple]:
    """(SeriesInstanceUID, frames) of a DICOM file from its header, None when it is not readable DICOM."""
    import io as _io

    import pydicom

    try:
        header = pydicom.dcmread(_io.BytesIO(item.read()), stop_before_pixels=True, force=True)
    except Exception:
        return None
    uid = str(getattr(header, "SeriesInstanceUID", "") or "")
    frames = int(getattr(header, "NumberOfFrames", 1) or 1)
    return (uid, frames) if uid else None


def _volume_jobs(files: list, report: IngestReport) -> tuple:
    """(volume jobs, the files left for the 2-D path). DICOM files are grouped by series: a series of
    two or more files, or one multi-frame file, is a scan; a lone single-frame file stays an image."""
    jobs, rest, series = [], [], {}
    for item in files:
        if is_nifti_name(item.name):
            jobs.append(VolumeJob(name=item.name, items=[item], kind="nifti"))
        elif _is_dicom_item(item.name):
            key = _series_key(item)
            if key is None:
                rest.append(item)  # the image reader says what is wrong with it
            else:
                series.setdefault(key[0], []).append((item, key[1]))
        else:
            rest.append(item)
    for uid, members in series.items():
        if len(members) == 1 and members[0][1] <= 1:
            rest.append(members[0][0])
            continue
        names = [item.name for item, _ in members]
        folder = str(PurePosixPath(names[0]).parent)
        common = folder if all(str(PurePosixPath(n).parent) == folder for n in names) else ""
        label = common if common not in ("", ".") else f"series {uid[-12:]}"
        jobs.append(VolumeJob(name=label, items=[item for item, _ in members], kind="dicom"))
    return jobs, sorted(rest, key=lambda item: item.name)


def _read_job(job: VolumeJob) -> list:
    """The ScanVolumes of one job (a DICOM job may hold several geometries: each its own volume)."""
    import tempfile

    from medclipseg.io.volumes import read_nifti

    if job.kind == "nifti":
        return [read_nifti(job.items[0].read(), name=PurePosixPath(job.name).name)]
    from medclipseg.io.dicom_series import read_dicom_volumes

    with tempfile.TemporaryDirectory(prefix="medclipseg-series-") as folder:
        paths = []
        for number, item in enumerate(job.items):
            # Numbered names only: nothing is written to a path taken from the source.
            path = Path(folder) / f"{number:06d}.dcm"
            path.write_bytes(item.read())
            paths.append(path)
        return read_dicom_volumes(paths, name=job.name)


def read_volume_job(job: VolumeJob, prompt, prompts, report: IngestReport, tick) -> tuple:
    """(prompt, [(name, ScanVolume)]) of one scan job; a job that cannot be read is reported, ([], )."""
    try:
        text = _prompt_for(job.name, prompt, prompts)
        volumes = _read_job(job)
    except (VolumeReadError, ImageReadError, PromptError) as exc:
        report.failed.append((job.name, str(exc)))
        tick(f"{job.name}: failed: {exc}")
        return None, []
    named = [(job.name if len(volumes) == 1 else f"{job.name} [{number + 1}/{len(volumes)}]", volume)
             for number, volume in enumerate(volumes)]
    return text, named


def plan_volume(store, volume, text: str, model_id: str, report: IngestReport, name: str, tick) -> Optional[bool]:
    """As plan_image for a scan: None when it is a duplicate (reported), else whether the case it
    belongs to was predicted before (so that it is re-scored)."""
    case = store.find_volume_case(volume, prompt=text)
    predicted_before = case is not None and store.latest_prediction_id(case.id) is not None
    if case is not None and (case.id in report.volumes or (predicted_before and (
            case.status != "unreviewed" or store.has_prediction_by(case.id, model_id)))):
        report.duplicates.append(case.id)
        tick(f"{name}: already in the queue (case {case.id})")
        return None
    return predicted_before


def store_volume_result(store, report: IngestReport, name: str, volume, text: str, result, predicted_before: bool,
                        *, batch: Optional[str], tick) -> None:
    if isinstance(result, Exception):  # e.g. out of memory on one scan: the other files go on
        message = f"the model could not predict it ({type(result).__name__}: {result})"
        report.failed.append((name, message))
        tick(f"{name}: failed: {message}")
        return
    case, _ = store.add_volume_case_with_prediction(volume, result, prompt=text, original_name=name,
                                                    source="ingest", batch=batch)
    (report.rescored if predicted_before else report.added).append(case.id)
    report.volumes.append(case.id)
    verb = "re-scored" if predicted_before else "added as volume case"
    tick(f"{name}: {verb} {case.id} ({result.seconds:.1f} s)")


def _ingest_volume(store, job: VolumeJob, *, prompt, prompts, predict_volume, batch, num_samples, threshold,
                   seed, model_id, report: IngestReport, tick) -> None:
    if predict_volume is None:
        message = "this ingest cannot predict volumes (no volume predictor was given)"
        report.failed.append((job.name, message))
        tick(f"{job.name}: failed: {message}")
        return
    text, volumes = read_volume_job(job, prompt, prompts, report, tick)
    for name, volume in volumes:
        predicted_before = plan_volume(store, volume, text, model_id, report, name, tick)
        if predicted_before is None:
            continue
        try:
            result = predict_volume(volume, text, num_samples=num_samples, threshold=threshold, seed=seed)
        except Exception as exc:
            result = exc
        store_volume_result(store, report, name, volume, text, result, predicted_before, batch=batch, tick=tick)
