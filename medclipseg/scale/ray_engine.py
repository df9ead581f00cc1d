"""Bulk prediction on Ray Data: a pool of model actors (one GPU each where the cluster has GPUs).

The optional extra ``pip install 'medclipseg[scale]'`` installs Ray. Nothing here writes to the
store: workers read inputs and predict, the driver (medclipseg.scale.bulk) decides what to predict
and writes the results, so the store keeps one writer.

Two passes over a source, each one Ray Data pipeline:
- identify (stateless tasks): read and decode each file, return its content hash, or why it failed.
  The driver then knows which files are new, already scored (skipped: a run started again finishes
  the rest only) or repeated, without a model.
- predict (an actor pool): each actor loads the model once (``PredictorSpec.build``) and predicts
  the rows of a batch together (``Predictor.predict_batch``; scans with ``predict_volume``). Rows
  carry where their bytes are (a file path or an archive member) or, for scans and stored cases,
  the input itself, never the driver's open files.

Workers that die are restarted and their batch retried (``MAX_RETRIES`` times, then the run stops
in words with what was stored kept); a batch finished twice is written once (the driver checks).
A run's workers must see the source at the same path as the driver (one machine, or a shared file
system on a cluster).
"""
from __future__ import annotations

import logging
import pickle
import socket
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np

__all__ = ["PredictorSpec", "RayEngine", "RayUnavailable", "connect", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'medclipseg[scale]'"
# Seconds to wait for a cluster's head to answer before giving up (an unreachable address fails at once).
PROBE_SECONDS = 3.0
# A worker that dies is restarted, and its batch retried, this many times before the run stops.
MAX_RETRIES = 3


class RayUnavailable(RuntimeError):
    """Ray is not installed, no cluster answers at the address, or the workers failed for good; the
    message says which and what to do."""


@dataclass(frozen=True)
class PredictorSpec:
    """How a worker builds its predictor; ``model_id`` (when given) must be what it loads."""

    source: str
    mode: str = "exact"
    device: Optional[str] = None
    precision: str = "fp32"
    model_id: Optional[str] = None

    def build(self):
        from medclipseg.inference.predictor import Predictor

        predictor = Predictor.from_pretrained(self.source, mode=self.mode, device=self.device,
                                              precision=self.precision)
        if self.model_id and predictor.model_id != self.model_id:
            raise RuntimeError(f"the worker loaded {predictor.model_id} from {self.source}, not {self.model_id}: "
                               "its files differ from the driver's (a worker must see the same model files)")
        return predictor


def _host_and_port(address: str) -> tuple:
    bare = address.split("://", 1)[-1].rstrip("/")
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"The Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379 or "
                             "ray://10.0.0.5:10001), 'auto' (a cluster started on this machine) or 'local'.")
    return host, int(port)


def _probe(address: str) -> None:
    host, port = _host_and_port(address)
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS):
            return
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise RayUnavailable(f"No Ray cluster answers at {address} ({reason}). Start one there with "
                             "`ray start --head`, give its address, or leave --ray-address out to run Ray "
                             "on this machine.") from None


def connect(address: Optional[str] = None, *, num_cpus: Optional[int] = None):
    """The ``ray`` module, joined to the cluster at ``address`` (None or "local": a Ray of this
    machine, with ``num_cpus`` CPUs). An address that does not answer fails within PROBE_SECONDS."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is part of the extra)
    except ImportError:
        raise RayUnavailable(f"The Ray engine needs Ray, which is not installed: {INSTALL_HINT}.") from None
    if address not in (None, "", "local", "auto"):
        _probe(address)
    if ray.is_initialized():
        return ray
    options = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    if address in (None, "", "local"):
        ray.init(num_cpus=num_cpus, **options)
    else:
        try:
            ray.init(address=address, **options)
        except Exception as exc:  # ConnectionError, a version mismatch, ...
            raise RayUnavailable(f"Could not join the Ray cluster at {address}: {exc}") from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # The commands print their own progress, one line per file; Ray Data's own lines would interleave.
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    return ray


# -- what the workers run ------------------------------------------------------------------------

def _identify(batch: dict) -> dict:
    """Pass 1: for each row, the content hash of its decoded image, or why it could not be read."""
    from medclipseg.annotation.ingest import read_located
    from medclipseg.annotation.store import content_hash
    from medclipseg.io.images import read_image

    hashes, errors = [], []
    for payload, name in zip(batch["payload"], batch["name"]):
        try:
            loaded = read_image(read_located(pickle.loads(payload), str(name)), name=str(name))
            hashes.append(content_hash(loaded.bgr))
            errors.append("")
        except Exception as exc:  # one file must not stop the others: reported by the driver
            hashes.append("")
            errors.append(str(exc) or type(exc).__name__)
    return {"index": np.asarray(batch["index"]), "hash": np.asarray(hashes, dtype=object),
            "error": np.asarray(errors, dtype=object)}


class _PredictWorker:
    """Pass 2: one model per actor; a batch's images predicted together, scans one by one."""

    def __init__(self, spec: PredictorSpec, threads: int, options: dict):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.predictor = spec.build()
        self.options = options

    def _read(self, kind: str, payload, name: str):
        from medclipseg.annotation.ingest import read_located
        from medclipseg.io.images import read_image
        from medclipseg.io.png import decode_png

        if kind == "image":
            loaded = read_image(read_located(payload, name), name=name)
            return loaded.bgr, {**loaded.metadata, "conversions": list(loaded.conversions)}
        with open(payload[1], "rb") as handle:  # "stored": a case's own lossless PNG
            return decode_png(handle.read()), {}

    def __call__(self, batch: dict) -> dict:
        from medclipseg.annotation.ingest import predict_images
        from medclipseg.inference.volume import predict_volume

        rows = list(zip(batch["index"], batch["kind"], batch["name"], batch["prompt"], batch["payload"]))
        results: dict = {}
        images = []  # (index, bgr, metadata, prompt)
        for index, kind, name, prompt, payload in rows:
            try:
                data = pickle.loads(payload)
                if kind == "volume":
                    volume, window = data
                    results[int(index)] = {"prediction": predict_volume(
                        self.predictor, volume, str(prompt), window=window, **self.options)}
                else:
                    bgr, metadata = self._read(str(kind), data, str(name))
                    images.append((int(index), bgr, metadata, str(prompt)))
            except Exception as exc:  # reported per row by the driver
                results[int(index)] = {"error": exc}
        predictions = predict_images(self.predictor, [(bgr, prompt) for _, bgr, _, prompt in images], **self.options)
        for (index, bgr, metadata, _), prediction in zip(images, predictions):
            if isinstance(prediction, Exception):
                results[index] = {"error": prediction}
            else:
                results[index] = {"prediction": prediction, "bgr": bgr, "metadata": metadata}
        indices = [int(index) for index, *_ in rows]
        return {"index": np.asarray(indices, dtype=np.int64),
                "result": np.asarray([pickle.dumps(results[i]) for i in indices], dtype=object)}


# -- the engine ----------------------------------------------------------------------------------

class RayEngine:
    """Predicts rows on a Ray cluster with ``workers`` model actors (default: one per GPU, else one
    per two CPUs). Rows are dicts: index, kind ("image", "stored" or "volume"), name, prompt, payload
    (what the worker reads: a locator tuple, or (ScanVolume, window) for a scan)."""

    name = "ray"

    def __init__(self, spec: PredictorSpec, *, address: Optional[str] = None, workers: Optional[int] = None,
                 num_cpus: Optional[int] = None, batch_size: int = 8):
        if workers is not None and int(workers) < 1:
            raise ValueError("--workers must be at least 1.")
        if int(batch_size) < 1:
            raise ValueError("The batch size must be at least 1.")
        self.ray = connect(address, num_cpus=num_cpus)
        self.spec = spec
        resources = self.ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        self.gpus_per_worker = 1 if gpus else 0
        self.workers = int(workers) if workers else (gpus or max(1, cpus // 2))
        if gpus and self.workers > gpus:
            raise ValueError(f"{self.workers} workers need {self.workers} GPUs; the cluster has {gpus}.")
        if not gpus and self.workers > cpus:
            raise ValueError(f"{self.workers} workers need {self.workers} CPUs; the cluster has {cpus}.")
        self.cpus_per_worker = 1 if gpus else max(1, cpus // self.workers)
        self.batch_size = int(batch_size)
        self.address = address

    def describe(self) -> str:
        where = "GPU" if self.gpus_per_worker else f"{self.cpus_per_worker} CPU"
        return f"Ray, {self.workers} worker{'s' if self.workers != 1 else ''} ({where} each)"

    def identify(self, rows: list) -> dict:
        """{index: (content hash, error)} for image rows (pass 1)."""
        if not rows:
            return {}
        dataset = self.ray.data.from_items([{"index": row["index"], "name": row["name"],
                                             "payload": pickle.dumps(row["payload"])} for row in rows])
        found = {}
        identified = dataset.map_batches(_identify, batch_size=max(1, self.batch_size * 4), num_cpus=1)
        try:
            for batch in identified.iter_batches(batch_size=None, batch_format="numpy"):
                for index, digest, error in zip(batch["index"], batch["hash"], batch["error"]):
                    found[int(index)] = (str(digest) or None, str(error) or None)
        except Exception as exc:
            raise RayUnavailable(f"The Ray workers could not read the source ({_first_line(exc)}); nothing "
                                 "was written.") from exc
        return found

    def predict(self, rows: Iterable[dict], *, num_samples: int, threshold: float, seed) -> Iterator[tuple]:
        """(index, result) as workers finish; result: {"prediction", "bgr", "metadata"} or {"error"}."""
        rows = list(rows)
        if not rows:
            return
        ray = self.ray
        dataset = ray.data.from_items([{"index": row["index"], "kind": row["kind"], "name": row["name"],
                                        "prompt": row["prompt"], "payload": pickle.dumps(row["payload"])}
                                       for row in rows])
        options = dict(num_samples=num_samples, threshold=threshold, seed=seed)
        with warnings.catch_warnings():
            # Ray Data restarts dead actors without end unless told; a scan that kills its worker every
            # time must stop the run instead. Ray marks the option deprecated but has no other way yet.
            warnings.simplefilter("ignore", DeprecationWarning)
            predicted = dataset.map_batches(
                _PredictWorker, fn_constructor_args=(self.spec, self.cpus_per_worker, options),
                batch_size=self.batch_size, compute=ray.data.ActorPoolStrategy(size=self.workers),
                num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
                max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)
        batches = iter(predicted.iter_batches(batch_size=None, batch_format="numpy"))
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as exc:  # workers that kept dying, a model that does not load on them, ...
                raise RayUnavailable(f"The Ray workers stopped ({_first_line(exc)}). Every case stored before "
                                     "this is kept; run the same command again to do the rest.") from exc
            for index, result in zip(batch["index"], batch["result"]):
                yield int(index), pickle.loads(result)


def _first_line(exc: BaseException) -> str:
    """The gist of a Ray error (its messages carry whole remote tracebacks)."""
    cause = exc
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:
        cause = cause.cause
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    text = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else type(exc).__name__)
    return text[:300]
