"""Helpers for the app tests: a real `python app.py` server on 127.0.0.1 and synthetic cases."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prediction_from_probability(probability, *, mutual_fraction=0.2, threshold=0.5, band_width=2, prompt="synthetic",
                                model_id="synthetic@0", num_samples=8, seconds=0.0, scores=None, conversions=()):
    """A Prediction around a given probability map: binary entropy, mutual information as a
    fraction of it (a number or a map), scores from `image_scores` (updated with `scores`)."""
    from medclipseg.inference.predictor import Prediction
    from medclipseg.inference.uncertainty import image_scores

    probability = np.asarray(probability, np.float32)
    p = np.clip(probability, 1e-6, 1 - 1e-6)
    entropy = (-(p * np.log(p) + (1 - p) * np.log(1 - p))).astype(np.float32)
    mutual = (entropy * mutual_fraction).astype(np.float32)
    mask = probability > threshold
    computed = image_scores(entropy, mutual, mask, band_width, probability=probability)
    computed.update(scores or {})
    return Prediction(probability=probability, mask=mask, entropy=entropy, mutual_information=mutual,
                      scores=computed, num_samples=num_samples, threshold=threshold, prompt=prompt,
                      model_id=model_id, seconds=seconds, image_shape=probability.shape, conversions=list(conversions))


def synthetic_prediction(height=48, width=64, seed=0, model_id="synthetic@0"):
    """A Prediction with smooth, plausible maps (no model run), for filling a queue fast."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    radius = rng.uniform(0.1, 0.3) * min(height, width)
    probability = 1.0 / (1.0 + np.exp((np.hypot(yy - cy, xx - cx) - radius) / rng.uniform(0.5, 4.0)))
    return prediction_from_probability(probability, mutual_fraction=rng.uniform(0.05, 0.3), model_id=model_id)


def fill_queue(store, count, *, height=48, width=64, seed=0, model_id=None):
    """`count` unreviewed cases with predictions; returns their ids. The predictions carry
    `model_id` (default: the database's current version, so the queue ranks them and a server's
    background re-scoring leaves them alone; "synthetic@0" in a database without one)."""
    model_id = model_id or store.current_model_id() or "synthetic@0"
    rng = np.random.default_rng(seed)
    ids = []
    for index in range(count):
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        case, _ = store.add_case_with_prediction(
            image, synthetic_prediction(height, width, seed=seed + index, model_id=model_id),
            prompt=f"lesion {index}", original_name=f"img{index:04d}.png", source="ingest")
        ids.append(case.id)
    return ids


def demo_model_id() -> str:
    """The demo model's content-hash id, computed from its files (no torch import)."""
    from medclipseg.registry import DEMO_NAME, MODEL_ID_DIGITS, content_hash, demo_weights_dir, model_files

    return f"{DEMO_NAME}@{content_hash(model_files(demo_weights_dir()))[:MODEL_ID_DIGITS]}"


def demo_database(db_path):
    """A database whose base version is the demo model, as `python app.py` records it."""
    from medclipseg.annotation.store import AnnotationStore

    store = AnnotationStore(db_path)
    store.ensure_base_version(demo_model_id(), source="demo", name="demo-tiny")
    return store


RANK_ORDER = "band_entropy"  # the queue order the test servers use


@contextmanager
def app_server(db_path, *, env=None, startup_timeout=240.0, log_path=None):
    """Start `python app.py` on a free port with the given database; yields (url, process)."""
    port = free_port()
    environment = dict(os.environ)
    environment.update({"MEDCLIPSEG_DB": str(db_path), "GRADIO_ANALYTICS_ENABLED": "False",
                        "MEDCLIPSEG_SAMPLES": environment.get("MEDCLIPSEG_SAMPLES", "8"),
                        # The browser tests follow the plain rank order (RANK_ORDER), so that which
                        # case is served next is known from the ranks the tests write.
                        "MEDCLIPSEG_QUEUE_ORDER": RANK_ORDER,
                        "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
    environment.update(env or {})
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path or (Path(db_path).parent / f"server-{port}.log"), "w")
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)],
                               cwd=str(ROOT), env=environment, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                log.flush()
                raise RuntimeError(f"app.py exited with {process.returncode}:\n{Path(log.name).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "config", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # answering, e.g. 401 behind a login
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not start in {startup_timeout:.0f} s:\n{Path(log.name).read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


# --------------------------------------------------------------------------------------
# the browser: Debian's Chromium driven by Playwright (never Playwright's own downloads)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser_or_skip():
    """Skip without Playwright or Chromium, unless MEDCLIPSEG_REQUIRE_BROWSER=1 makes it a failure."""
    import pytest

    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        missing = "the playwright package"
    else:
        missing = None if CHROMIUM.exists() else str(CHROMIUM)
    if missing:
        message = f"{missing} is not installed (bash .ci/run installs both)"
        if os.environ.get("MEDCLIPSEG_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


def screenshot_dir(tmp_path) -> Path:
    """MEDCLIPSEG_SCREENSHOTS, else the test's tmp folder."""
    folder = Path(os.environ.get("MEDCLIPSEG_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def db_rows(db_path, sql, params=()):
    import sqlite3

    connection = sqlite3.connect(db_path)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


# --------------------------------------------------------------------------------------
# bad and sensitive input files


def write_truncated_png(path, seed=0):
    import cv2

    image = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = cv2.imencode(".png", image)[1].tobytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return Path(path)


def write_text_as_png(path):
    Path(path).write_text("This is a text file, not an image.\n" * 20)
    return Path(path)


def write_huge_png(path, side=20000):
    """A valid, highly compressed side x side grey PNG (about 400 KB), written row by row."""
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + zeros
    pieces = []
    block = row * 500
    for _ in range(side // 500):
        pieces.append(compressor.compress(block))
    pieces.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    with open(path, "wb") as stream:
        stream.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(pieces)) +
                     chunk(b"IEND", b""))
    return Path(path)


PATIENT_NAME = "DOE^JANE^Q"
PATIENT_ID = "PID-8675309-X"


def write_dicom(path, *, with_pixels=True, patient_name=PATIENT_NAME, patient_id=PATIENT_ID, size=64,
                pixel_spacing=(0.7, 0.7)):
    """A CT-like DICOM (Hounsfield units via rescale) carrying patient identifiers in its header."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientName = patient_name
    dataset.PatientID = patient_id
    dataset.PatientBirthDate = "19700101"
    dataset.InstitutionName = "Saint Example Hospital"
    dataset.AccessionNumber = "ACC-445566"
    dataset.Modality = "CT"
    dataset.PixelSpacing = list(pixel_spacing)
    dataset.WindowCenter = 40
    dataset.WindowWidth = 400
    if with_pixels:
        yy, xx = np.mgrid[:size, :size]
        hu = np.where(np.hypot(yy - size / 2, xx - size / 2) < size / 4, 60, -900).astype(np.int16)
        stored = (hu + 1024).astype(np.uint16)
        dataset.Rows, dataset.Columns = stored.shape
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated = 16
        dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 0
        dataset.RescaleSlope = 1
        dataset.RescaleIntercept = -1024
        dataset.PixelData = stored.tobytes()
    dataset.save_as(str(path), enforce_file_format=True)
    return Path(path)


def files_under(folder) -> dict:
    """{relative path: bytes} of every file below ``folder``."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------
# cases with known maps, served first by the review queue


def ranked_case(store, probability, *, rank, name="case.png", prompt="a lesion", image=None, model_id=None):
    """Add a case whose prediction has exactly ``probability`` and the queue rank ``rank`` in the
    default order (so a case added with a higher rank is the next one served); returns
    (case id, prediction id). The image defaults to a grey picture of the map with noise seeded by
    ``rank`` (the store keeps one case per image and prompt, so equal maps still make new cases)."""
    from medclipseg.annotation.queue import ACQUISITIONS

    probability = np.asarray(probability, np.float32)
    if image is None:
        noise = np.random.default_rng(int(rank)).integers(0, 16, probability.shape)
        grey = np.round(64 + 128 * probability + noise).astype(np.uint8)
        image = np.repeat(grey[..., None], 3, axis=2)
    model_id = model_id or store.current_model_id() or "synthetic@0"
    scores = {ACQUISITIONS[RANK_ORDER].score_key: float(rank)}
    # One transaction: a running app's background re-scoring takes any case it sees without a
    # prediction of the current model, and its own prediction would replace the rank written here.
    case, prediction_id = store.add_case_with_prediction(
        np.ascontiguousarray(image), prediction_from_probability(probability, model_id=model_id, scores=scores),
        prompt=prompt, original_name=name, source="ingest")
    return case.id, prediction_id


def soft_disk(shape, centre, radius, softness):
    """A probability map: a disk of ``radius`` around ``centre`` (row, column) with a logistic edge."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    distance = np.hypot(yy - centre[0], xx - centre[1])
    return (1.0 / (1.0 + np.exp((distance - radius) / softness))).astype(np.float32)


def soft_ring(shape, centre, radius, half_width, softness):
    """A probability map: a ring of ``radius`` (``half_width`` either side) with a logistic edge."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    distance = np.abs(np.hypot(yy - centre[0], xx - centre[1]) - radius)
    return (1.0 / (1.0 + np.exp((distance - half_width) / softness))).astype(np.float32)


# --------------------------------------------------------------------------------------
# page helpers


def wait_for_status(page, text, timeout=30_000) -> str:
    """Wait until #status contains ``text``; a timeout fails with what #status says instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function("(text) => document.querySelector('#status').innerText.includes(text)", arg=text,
                               timeout=timeout)
    except PlaywrightTimeout:
        raise AssertionError(f"#status never said {text!r}; it says {page.inner_text('#status')!r}") from None
    return page.inner_text("#status")


def open_tab(page, name) -> None:
    """Click the tab called ``name``, through the "More tabs" menu when it does not fit in the row."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return
    page.locator("button[aria-label='More tabs']:visible").first.click()
    page.locator(".overflow-menu button:visible", has_text=name).first.click()


def drag_across_editor(page, start, step, moves=24) -> None:
    """One stroke of the current tool across the editor's canvas: from ``start`` (fractions of the
    canvas width and height), ``moves`` pointer moves of ``step`` (dx, dy) CSS pixels each."""
    canvas = page.locator("#editor .mse-canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    x0, y0 = box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1]
    page.mouse.move(x0, y0)
    page.mouse.down()
    for move in range(1, moves + 1):
        page.mouse.move(x0 + move * step[0], y0 + move * step[1])
    page.mouse.up()


@contextmanager
def chromium_browser():
    """Debian's Chromium, headless, through Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def new_app_page(browser, url, *, width=1440, height=900):
    """A page of its own (a new context) on the app at ``url``, loaded up to the *Next case* button."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_selector("#next-case")
    return page


def ingest_scan_in_browser(browser, url, db_path, scan, prompt, *, name_like) -> int:
    """Ingest ``scan`` through the Ingest tab with one ``prompt``; returns the id of the volume case
    whose original name is LIKE ``name_like`` (there must be exactly one)."""
    page = new_app_page(browser, url)
    try:
        open_tab(page, "Ingest")
        page.locator("#ingest-files input[type=file]").set_input_files([str(scan)])
        page.get_by_label("One prompt for every image or scan").fill(prompt)
        page.click("#ingest")
        page.wait_for_function("document.querySelector('#ingest-report').innerText.includes('volume added')",
                               timeout=240_000)
    finally:
        page.context.close()
    rows = db_rows(db_path, "SELECT id FROM cases WHERE original_name LIKE ?", (name_like,))
    assert len(rows) == 1, rows
    return int(rows[0][0])


def go_to_slice(page, index: int) -> None:
    """Move the volume editor to slice ``index`` and wait until it shows it and nothing is on its way."""
    page.evaluate("(i) => window.medclipsegEditor.goToSlice(i)", index)
    page.wait_for_function(f"(() => {{ const v = window.medclipsegEditor.volume(); return v.index === {index} && "
                           "v.target === null && !v.busy; })()")


def axial_stroke(page, y: int, x0: int, x1: int, step: int = 2) -> None:
    """A stroke of the current tool along row ``y`` of the axial pane's slice, from column ``x0`` to
    ``x1``, as the mouse paints it (a move every ``step`` pixels)."""
    def at(x):
        return page.evaluate("""([x, y]) => { const v = window.medclipsegEditor.paneView('axial');
            return [v.left + v.ox + (x + 0.5) * v.scale, v.top + v.oy + (y + 0.5) * v.scale * v.aspect]; }""", [x, y])
    page.mouse.move(*at(x0))
    page.mouse.down()
    for x in range(x0 + 1, x1 + 1, step):
        page.mouse.move(*at(x))
    page.mouse.up()
