"""What an annotator waits for in the three-plane volume editor, driven in a real browser.

    python benchmarks/volume_editor_latency.py [--size 512x512x300] [--events 20]

A new database with one volume case: the real Colin27 T1 (Debian's mricron-data) resampled to
``--size`` voxels, with a prediction of the demo model at 2 Monte-Carlo samples. A real
``python app.py`` serves it and Debian's Chromium (Playwright, headless, 1440x900) takes it with
*Next case*. Then, ``events`` times each, from the call in the page until the editor shows the
result and the next animation frame is drawn:

- ``slice``: the next acquisition slice (what the wheel and the arrow keys do), alternating up and
  down, so the slice comes from the editor's cache of neighbours, as it does while scrolling;
- ``plane``: switching the edited plane (axial -> coronal -> sagittal -> axial ...), until the new
  active pane shows its slice;
- ``crosshair``: moving the crosshair to another voxel of one pane's slice (a click with the
  crosshair tool in the axial, then the coronal pane), until every pane shows the slice through it,
  fresh from the server (the two other planes' slices are not cached).

- ``interpolate``: a brush stroke on two acquisition slices 21 apart, then *Interpolate* (20 slices
  filled), until the editor has the server's answer and the slice on screen drawn; then *Undo*
  and again (``--tool-events`` times);
- ``propagate``: from the slice where the model's mask is largest, *Propagate ↕*
  with both stop limits off (so it runs until the model's mask ends or the volume does), divided
  by the slices it filled; undone and again.

Both tool timings include handing over the stroked slice on screen (a step of the server's
history) and writing the draft with its provenance, as every step does.

Medians throughout. The last line reads ``slice_ms=<x> plane_ms=<y> interpolate_ms=<z>
propagate_slice_ms=<w>``: ``plane_ms`` is the larger of the plane switch and crosshair medians.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

import app_support  # noqa: E402
from volume_latency import PROMPT, T1, parse_size, resampled_t1  # noqa: E402

TIMED = """([script, arg, done]) => new Promise((resolve) => {
    const started = performance.now();
    new Function("arg", script)(arg);
    const check = () => {
        if (new Function(done)()) requestAnimationFrame(() => resolve(performance.now() - started));
        else setTimeout(check, 1);
    };
    check();
})"""
PLANES_SETTLED = """const p = window.medclipsegEditor.planes();
return p && !p.busy && Object.values(p.panes).every((pane) => pane.fresh && !pane.loading && pane.shown === pane.index);"""


def make_database(folder: Path, size: tuple) -> Path:
    from medclipseg.inference.predictor import Predictor
    from medclipseg.inference.volume import predict_volume

    db_path = folder / "db" / "annotations.db"
    store = app_support.demo_database(db_path)
    volume = resampled_t1(size)
    began = time.perf_counter()
    prediction = predict_volume(Predictor.from_pretrained("demo"), volume, PROMPT, num_samples=2, seed=0)
    case, _ = store.add_volume_case_with_prediction(volume, prediction, prompt=PROMPT, original_name="t1.nii.gz")
    geometry = store.volume_geometry(case.id)
    print(f"case of {geometry.depth} {geometry.plane} slices of {geometry.rows} x {geometry.columns} predicted and "
          f"stored in {time.perf_counter() - began:.1f} s", flush=True)
    store.close()
    # Propagation starts on the slice where the model's mask is largest (the demo model is not a
    # brain segmenter: its mask is empty on most slices, the start slice included).
    areas = (volume.to_display(prediction.probability) > prediction.threshold).sum(axis=(1, 2))
    return db_path, int(np.argmax(areas))


def timed(page, script: str, arg, done: str) -> float:
    return page.evaluate(TIMED, [script, arg, done])


TOOL_DONE = "Number(document.querySelector('#editor [data-case-id]').dataset.toolDone || 0) > {done}"


def go_to(page, index: int) -> None:
    app_support.go_to_slice(page, index)


def stroke(page, y: int, x0: int, x1: int) -> None:
    """A brush stroke along row ``y`` of the axial pane's slice, as the mouse paints it."""
    app_support.axial_stroke(page, y, x0, x1, step=8)


def timed_tool(page, tool: str, extra: dict) -> float:
    done = int(page.evaluate("document.querySelector('#editor [data-case-id]').dataset.toolDone || '0'"))
    return timed(page, "window.medclipsegEditor.volumeTool(arg[0], arg[1])", [tool, extra],
                 "return " + TOOL_DONE.format(done=done) + ";")


def tool_timings(page, events: int, propagate_from: int) -> tuple:
    """(interpolation times, [(propagation time, slices filled)]) in ms, as the module docstring says."""
    volume = page.evaluate("window.medclipsegEditor.volume()")
    depth, shown = volume["depth"], volume["index"]
    low = max(0, min(shown - 10, depth - 23))
    high = low + 21
    width = page.evaluate("window.medclipsegEditor.state().width")
    page.keyboard.press("b")
    for index in (low, high):
        go_to(page, index)
        stroke(page, width // 2, width // 4, 3 * width // 4)
    interpolate = []
    for event in range(events):
        interpolate.append(timed_tool(page, "interpolate", {}))
        provenance = page.evaluate("window.medclipsegEditor.provenance()")
        assert provenance.count("interpolated") == 20, provenance.count("interpolated")
        timed_tool(page, "undo", {})
    page.fill("#editor .mse-stop-entropy", "")
    page.fill("#editor .mse-stop-area", "")
    go_to(page, propagate_from)
    propagate = []
    for event in range(events):
        ms = timed_tool(page, "propagate", {"direction": "both"})
        filled = page.evaluate("window.medclipsegEditor.provenance()").count("propagated")
        if event == 0:
            print("propagation:", page.locator("#editor .mse-message").inner_text(), flush=True)
        propagate.append((ms, filled))
        if filled:
            timed_tool(page, "undo", {})
    return interpolate, propagate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=(512, 512, 300), help="voxels i x j x k")
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--tool-events", type=int, default=5)
    args = parser.parse_args()
    if not T1.is_file():
        sys.exit(f"{T1} is missing: install Debian's mricron-data for the real T1.")
    if not app_support.CHROMIUM.exists():
        sys.exit(f"{app_support.CHROMIUM} is not installed (Debian's chromium package).")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="medclipseg-bench-") as folder, ExitStack() as stack:
        db_path, propagate_from = make_database(Path(folder), args.size)
        url, _ = stack.enter_context(app_support.app_server(db_path, log_path=Path(folder) / "server.log"))
        playwright = stack.enter_context(sync_playwright())
        browser = playwright.chromium.launch(executable_path=str(app_support.CHROMIUM), headless=True,
                                             args=app_support.CHROMIUM_ARGS)
        stack.callback(browser.close)
        page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        page.set_default_timeout(120_000)
        page.goto(url)
        page.wait_for_selector("#next-case")
        page.fill("#annotator textarea", "bench")
        began = time.perf_counter()
        page.click("#next-case")
        page.wait_for_selector('#editor [data-ready="true"]')
        page.wait_for_function(f"(() => {{ {PLANES_SETTLED} }})()")
        print(f"case open with its three planes in {time.perf_counter() - began:.1f} s", flush=True)

        # Slice: one step at a time, up and down (the neighbours are cached as the wheel finds them).
        slice_times = []
        for event in range(args.events):
            index = page.evaluate("window.medclipsegEditor.volume().index")
            target = index + (1 if event % 2 == 0 else -1)
            slice_times.append(timed(page, "window.medclipsegEditor.goToSlice(arg)", target,
                                     "const v = window.medclipsegEditor.volume(); return v.index === "
                                     f"{target} && v.target === null && !v.waiting;"))
            page.wait_for_function("!window.medclipsegEditor.volume().busy")

        # Plane switch: the next plane becomes the edited one.
        order = ["coronal", "sagittal", "axial"]
        plane_times = []
        for event in range(args.events):
            plane = order[event % 3]
            plane_times.append(timed(page, "window.medclipsegEditor.activatePlane(arg)", plane,
                                     "const p = window.medclipsegEditor.planes(); return p.active === "
                                     f"'{plane}' && !p.panes['{plane}'].loading;"))
            page.wait_for_function(f"(() => {{ {PLANES_SETTLED} }})()")
        page.evaluate("window.medclipsegEditor.activatePlane('axial')")
        page.wait_for_function(f"(() => {{ {PLANES_SETTLED} }})()")

        # Crosshair: a click in one pane moves the voxel within that pane's slice, so the other two
        # planes change slice (slices not cached: far from the ones before). Clicks in the axial pane
        # (coronal and sagittal change) and in the coronal pane (axial and sagittal change) in turn.
        shape = page.evaluate("(() => { const p = window.medclipsegEditor.planes().panes; "
                              "return [p.axial.depth, p.coronal.depth, p.sagittal.depth]; })()")
        rng = np.random.default_rng(0)
        crosshair_times = []
        for event in range(args.events):
            point = page.evaluate("window.medclipsegEditor.planes().point")
            kept = 0 if event % 2 == 0 else 1     # the clicked pane's own axis keeps its slice
            point = [point[k] if k == kept else int(rng.integers(0, shape[k])) for k in range(3)]
            crosshair_times.append(timed(page, "window.medclipsegEditor.moveCrosshair(arg)", point, PLANES_SETTLED))
            page.wait_for_function("!window.medclipsegEditor.volume().busy")
        round_trips = [t["round_trip_ms"] for t in page.evaluate("window.medclipsegEditor.planes().timings")]
        interpolate_times, propagate_times = tool_timings(page, args.tool_events, propagate_from)

    slice_ms = statistics.median(slice_times)
    switch_ms = statistics.median(plane_times)
    crosshair_ms = statistics.median(crosshair_times)
    print(f"slice change (cached neighbour): median {slice_ms:.1f} ms, max {max(slice_times):.1f} ms")
    print(f"plane switch: median {switch_ms:.1f} ms, max {max(plane_times):.1f} ms")
    print(f"crosshair move: median {crosshair_ms:.1f} ms, max {max(crosshair_times):.1f} ms; "
          f"plane requests: median round trip {statistics.median(round_trips):.1f} ms")
    interpolate_ms = statistics.median(interpolate_times)
    propagate_ms = statistics.median(t for t, _ in propagate_times)
    filled = propagate_times[0][1]
    propagate_slice_ms = propagate_ms / filled if filled else float("nan")
    print(f"interpolation of 20 slices: median {interpolate_ms:.1f} ms, max {max(interpolate_times):.1f} ms")
    print(f"propagation both ways, stops off: {filled} slices in a median {propagate_ms:.1f} ms "
          f"({propagate_slice_ms:.1f} ms a slice)")
    print(f"slice_ms={slice_ms:.1f} plane_ms={max(switch_ms, crosshair_ms):.1f} interpolate_ms={interpolate_ms:.1f} "
          f"propagate_slice_ms={propagate_slice_ms:.1f}")


if __name__ == "__main__":
    main()
