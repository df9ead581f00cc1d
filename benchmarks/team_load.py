"""A team under load: 32 annotators and 2 reviewers on one app server, through its API.

    python benchmarks/team_load.py --engine sqlite [--seconds 300] [--cases 3000]
    python benchmarks/team_load.py --engine postgresql --url postgresql://user:password@127.0.0.1:5432/empty_db

Starts its own ``python app.py`` on 127.0.0.1 with logins for 32 annotators and 2 reviewers and a
project of two raters per case with the review step on, over a database filled with synthetic
cases (64 x 48 images with model maps; no model runs during the test). Every annotator is a
``gradio_client`` client in its own thread that loops: ``/next_case``, then ``/save_correction``
of a mask for that case; every reviewer loops ``/next_review`` then ``/review`` (approve).

Checked at the end, against the database itself:

* **lost**: saves the server acknowledged (a version number came back) that are not rows of
  ``corrections`` (must be 0);
* **double_served**: times a case was handed to an annotator while another annotator held it
  (handed out to them, and their save not yet sent: once it is sent, the server may release the
  case the moment the save commits, before the client hears back; must be 0);
* **served_twice**: times one annotator was handed a case they had already labelled (must be 0);
* p95 of ``next_case`` and ``save_correction`` as the clients saw them (milliseconds), leaving out
  each client's first call, which also sets its session up on the server (reported apart).

The last line is ``engine=<e> annotators=32 saves=<n> lost=<k> double_served=<d> p95_next_ms=<x>
p95_save_ms=<y>``; the line before it gives the medians, ``served_twice`` and the reviews.
``--client http`` (default) calls each endpoint with one HTTP request (HttpClient);
``--client gradio_client`` uses the client the tests use. ``--think-seconds`` lets each annotator and
reviewer spend between half and one and a half times that long on a case before saving (real
annotators take far longer; 0 is a stress test with no pause at all). ``--engine sqlite`` makes a new
SQLite file; ``--engine postgresql --url URL`` fills the database at URL, which must hold no cases
(a new, empty database: its tables are made on the way), with the files in a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ANNOTATORS, REVIEWERS = 32, 2


def fill(location, files_dir: Path, cases: int) -> None:
    """A database with `cases` unreviewed synthetic cases, ranked by a synthetic model."""
    from medclipseg.annotation.store import AnnotationStore
    from medclipseg.inference.predictor import Prediction
    from medclipseg.inference.uncertainty import image_scores
    from medclipseg.registry import DEMO_NAME, MODEL_ID_DIGITS, content_hash, demo_weights_dir, model_files

    model_id = f"{DEMO_NAME}@{content_hash(model_files(demo_weights_dir()))[:MODEL_ID_DIGITS]}"
    store = AnnotationStore(location, files_dir=files_dir)
    if store.counts()["unreviewed"] or store.counts()["corrections"]:
        store.close()
        raise SystemExit("team_load.py: error: the database already holds cases; give a new, empty one.")
    store.ensure_base_version(model_id, source="demo", name="demo-tiny")
    store.set_project_settings(raters_per_case=2, review_required=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :64]
    for index in range(cases):
        image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        radius = rng.uniform(5, 14)
        probability = (1 / (1 + np.exp((np.hypot(yy - 24, xx - 32) - radius) / rng.uniform(0.5, 4)))).astype(np.float32)
        p = np.clip(probability, 1e-6, 1 - 1e-6)
        entropy = (-(p * np.log(p) + (1 - p) * np.log(1 - p))).astype(np.float32)
        mask = probability > 0.5
        prediction = Prediction(probability=probability, mask=mask, entropy=entropy,
                                mutual_information=entropy * 0.2, scores=image_scores(entropy, entropy * 0.2, mask, 2,
                                                                                      probability=probability),
                                num_samples=8, threshold=0.5, prompt=f"lesion {index}", model_id=model_id,
                                seconds=0.0, image_shape=probability.shape, conversions=[])
        store.add_case_with_prediction(image, prediction, prompt=f"lesion {index}", original_name=f"img{index:05d}.png",
                                       source="ingest")
    store.close()


def start_server(location, files_dir: Path, port: int, auth: str, log_path: Path):
    env = dict(os.environ, MEDCLIPSEG_DB=str(location), MEDCLIPSEG_FILES_DIR=str(files_dir), MEDCLIPSEG_AUTH=auth, GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", MEDCLIPSEG_QUEUE_ORDER="band_entropy")
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)],
                               cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise SystemExit(f"app.py exited: {log_path.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2)
            break
        except urllib.error.HTTPError:
            break  # 401 behind the login: up
        except Exception:
            if time.monotonic() > deadline:
                process.kill()
                raise SystemExit("app.py did not start in 300 s")
            time.sleep(0.5)
    return process, log


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HttpClient:
    """One signed-in session calling the app's endpoints by their direct route, one POST each
    (``/gradio_api/run/<name>``; a file goes up first through ``/gradio_api/upload``). This is the
    whole cost a script pays per call; gradio_client adds its event-stream protocol (about 90 ms
    per call on this machine, by its polling) on top of the same server work."""

    def __init__(self, url: str, auth: tuple):
        import httpx

        import uuid

        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=120)
        # One session per client, as a browser tab or gradio_client has: the server keeps its state
        # instead of building a fresh one (every component's config) for each call.
        self.session_hash = uuid.uuid4().hex[:12]
        response = self.http.post(f"{self.url}/login", data={"username": auth[0], "password": auth[1]})
        response.raise_for_status()

    def upload(self, path: Path) -> dict:
        with open(path, "rb") as stream:
            response = self.http.post(f"{self.url}/gradio_api/upload", files={"files": (path.name, stream)})
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def predict(self, *args, api_name: str):
        args = [self.upload(arg) if isinstance(arg, Path) else arg for arg in args]
        response = self.http.post(f"{self.url}/gradio_api/run/{api_name.strip('/')}", json={"data": args, "session_hash": self.session_hash})
        body = response.json()
        if response.status_code != 200 or "error" in body:
            raise RuntimeError(body.get("error") or body)
        data = body["data"]
        return data[0] if len(data) == 1 else data


class GradioClient:
    """The same calls through gradio_client (what the tests use)."""

    def __init__(self, url: str, auth: tuple):
        from gradio_client import Client

        self.client = Client(url, verbose=False, auth=auth)

    def predict(self, *args, api_name: str):
        from gradio_client import handle_file

        args = [handle_file(str(arg)) if isinstance(arg, Path) else arg for arg in args]
        return self.client.predict(*args, api_name=api_name)


def p95(values) -> float:
    return float(np.percentile(values, 95)) if values else float("nan")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--url", help="a PostgreSQL database URL (with --engine postgresql)")
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--client", choices=("http", "gradio_client"), default="http",
                        help="how the simulated people call the API (see HttpClient)")
    parser.add_argument("--think-seconds", type=float, default=5.0,
                        help="about how long each person spends on a case (default 5, faster than anyone; 0: no pause)")
    args = parser.parse_args(argv)
    if (args.engine == "postgresql") != bool(args.url):
        parser.error("--url goes with --engine postgresql (a new, empty PostgreSQL database), and only with it")
    Client = HttpClient if args.client == "http" else GradioClient
    work = Path(tempfile.mkdtemp(prefix="team-load-"))
    process = log = None
    try:
        location = args.url or work / "db" / "annotations.db"
        files_dir = work / "db" / "annotations_files"
        started = time.perf_counter()
        fill(location, files_dir, args.cases)
        print(f"filled {args.cases} cases in {time.perf_counter() - started:.0f} s", flush=True)
        names = [f"ann{i:02d}" for i in range(ANNOTATORS)] + [f"rev{i}" for i in range(REVIEWERS)]
        auth = ",".join(f"{name}:pw-{name}" + (":reviewer" if name.startswith("rev") else "") for name in names)
        port = free_port()
        process, log = start_server(location, files_dir, port, auth, work / "server.log")
        url = f"http://127.0.0.1:{port}/"
        mask_path = work / "mask.png"
        import cv2

        mask = np.zeros((48, 64), np.uint8)
        mask[14:34, 20:44] = 255
        cv2.imwrite(str(mask_path), mask)

        lock = threading.Lock()
        holding = {}                       # case id -> (annotator, "holding" | "saving")
        double_served, served_twice = [], []
        labelled = defaultdict(set)        # annotator -> cases they saved
        acknowledged = []                  # (case id, version)
        next_ms, save_ms, first_ms, failures, reviews = [], [], [], [], [0]
        stop_at = time.monotonic() + args.seconds

        def think(rng):
            """Time on a case: uniform between half and one and a half times --think-seconds, so that
            the simulated people do not act in lockstep."""
            if args.think_seconds:
                time.sleep(args.think_seconds * rng.uniform(0.5, 1.5))

        def annotator(name):
            rng = np.random.default_rng(abs(hash(name)) % 2**32)
            client = Client(url, (name, f"pw-{name}"))
            first = True
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    case, _image = client.predict("", "", api_name="/next_case")
                except Exception as exc:
                    failures.append(f"{name} next_case: {exc}")
                    continue
                # A session's first call also sets the session up on the server (once a day for a
                # person): reported apart from the steady state.
                (first_ms if first else next_ms).append(1000 * (time.perf_counter() - t0))
                first = False
                case_id = case.get("case_id")
                if case_id is None:
                    return
                with lock:
                    # Held by another who has not started saving: the server still leases it to them.
                    other = holding.get(case_id)
                    if other is not None and other[0] != name and other[1] == "holding":
                        double_served.append((case_id, other[0], name))
                    if case_id in labelled[name]:
                        served_twice.append((case_id, name))
                    holding[case_id] = (name, "holding")
                think(rng)
                t0 = time.perf_counter()
                try:
                    with lock:  # from here the server may release it as soon as the save commits
                        holding[case_id] = (name, "saving")
                    saved = client.predict(case_id, mask_path, "", "corrected", None, None, None,
                                           api_name="/save_correction")
                except Exception as exc:
                    failures.append(f"{name} save: {exc}")
                    with lock:
                        holding.pop(case_id, None)
                    continue
                save_ms.append(1000 * (time.perf_counter() - t0))
                with lock:
                    holding.pop(case_id, None)
                    labelled[name].add(case_id)
                    acknowledged.append((case_id, int(saved["version"])))

        def reviewer(name):
            rng = np.random.default_rng(abs(hash(name)) % 2**32)
            client = Client(url, (name, f"pw-{name}"))
            while time.monotonic() < stop_at:
                try:
                    summary, _image = client.predict("uncertainty", "", api_name="/next_review")
                    if summary.get("case_id") is None:
                        time.sleep(0.5)
                        continue
                    think(rng)
                    client.predict(summary["case_id"], summary["version"], "approve", "", None, "", api_name="/review")
                    reviews[0] += 1
                except Exception as exc:
                    failures.append(f"{name} review: {exc}")

        threads = [threading.Thread(target=annotator, args=(name,)) for name in names[:ANNOTATORS]]
        threads += [threading.Thread(target=reviewer, args=(name,)) for name in names[ANNOTATORS:]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
        if log is not None:
            log.close()
    from medclipseg.annotation.store import AnnotationStore

    with AnnotationStore(location, files_dir=files_dir) as store:
        stored = {(int(row["case_id"]), int(row["version"]))
                  for row in store.corrections(latest_only=False, statuses=("corrected", "accepted"))}
    lost = len(set(acknowledged) - stored)
    if failures:
        print(f"{len(failures)} refused or failed calls; first: {failures[:3]}")
    shutil.rmtree(work, ignore_errors=True)
    median = lambda values: statistics.median(values) if values else float("nan")  # noqa: E731
    print(f"client={args.client} think_seconds={args.think_seconds:g} seconds={args.seconds:g} "
          f"median_next_ms={median(next_ms):.1f} median_save_ms={median(save_ms):.1f} "
          f"first_call_median_ms={median(first_ms):.1f} served_twice={len(served_twice)} reviews={reviews[0]}")
    print(f"engine={args.engine} annotators={ANNOTATORS} saves={len(acknowledged)} lost={lost} "
          f"double_served={len(double_served)} p95_next_ms={p95(next_ms):.1f} p95_save_ms={p95(save_ms):.1f}")


if __name__ == "__main__":
    main()
