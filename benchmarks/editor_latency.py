"""How long the mask editor takes per threshold change and per tool, driven in a real browser.

    python benchmarks/editor_latency.py [--sizes 512,1411] [--events 20] [--profile]

For each image size: a new database with one case whose prediction has smooth, irregular maps
of that size, a real ``python app.py`` server, and Debian's Chromium (Playwright, headless,
1440x900) that takes the case with *Next case*. Then, `events` times each:

- mask threshold: the slider set to 0.4 / 0.6 in turn;
- Grow by 2 px / Undo in turn;
- Band -> foreground / Undo in turn.

Two times per event. Page side: the editor's own ``timings()`` (threshold_ms, tool_ms: the work
done in the page before the canvas is redrawn) and dispatch to the next animation frame.
Server: from the moment the page fires the debounced ``input`` event (the editor's 350 ms timer
callback, caught by wrapping ``setTimeout`` before the page loads) until ``#numbers`` shows the
result (the new threshold, or the new mask area); it holds the Gradio round trip, the handler
(draft saved, numbers recomputed) and the DOM update. The same handler, called in-process on the
same case, is timed too, so the transport's share is visible.

Opening the case: the size of the value sent (JSON bytes) and the time from the *Next case*
click until the editor says ``data-ready``.

The baseline, in the same run on the same maps: what the server did per threshold change
before the editor composed on the client, rendering the overlay (``render.overlay_mask``) and
the heat map (``render.entropy_heatmap``) and PNG-encoding both. Medians throughout. The last
line reads ``threshold_ms=<server median> tool_ms=<server median> image=<w>x<h>`` for the
largest size.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the app tests' server and browser helpers

import app_support

EDITOR_SCRIPT = ROOT / "medclipseg" / "app" / "editor" / "mask_editor.js"
# The editor's debounce before it fires "input": publish(delay = N) in its script.
DEBOUNCE_MS = int(re.search(r"function publish\(delay = (\d+)\)", EDITOR_SCRIPT.read_text()).group(1))
THRESHOLDS = (0.4, 0.6)
UNCERTAINTY = 0.35            # handlers.DEFAULT_VIEW["uncertainty_threshold"]
ANNOTATOR = "bench"
EVENT_TIMEOUT_MS = 60_000

# Runs before any page script: timestamps of the editor's debounced trigger (the callback of a
# 350 ms setTimeout) and helpers the measurements use.
INIT_SCRIPT = """
(() => {
  const original = window.setTimeout.bind(window);
  window.__benchTriggers = [];
  window.setTimeout = (callback, delay, ...rest) => {
    if (delay === DEBOUNCE_MS && typeof callback === "function") {
      const wrapped = (...args) => { window.__benchTriggers.push(performance.now()); return callback(...args); };
      return original(wrapped, delay, ...rest);
    }
    return original(callback, delay, ...rest);
  };
  // When the page posts an event to the server's queue (the queue summary's timer posts too).
  window.__benchJoins = [];
  const originalFetch = window.fetch.bind(window);
  window.fetch = (resource, options) => {
    const address = typeof resource === "string" ? resource : (resource && resource.url) || "";
    if (address.includes("queue/join")) window.__benchJoins.push(performance.now());
    return originalFetch(resource, options);
  };
  window.__benchNumbersRow = (label) => {
    for (const row of document.querySelectorAll("#numbers tr")) {
      const cells = row.querySelectorAll("td");
      if (cells.length >= 2 && cells[0].textContent.trim() === label) return cells[1].textContent.trim();
    }
    return null;
  };
  window.__benchEditorRoot = () => document.querySelector('[data-ready]');
})();
""".replace("DEBOUNCE_MS", str(DEBOUNCE_MS))

# One event in the page: wait for the numbers to show `expected` (computed after the action),
# then report the page-side and the trigger-to-numbers times.
EVENT_SCRIPT = """
async ([kind, argument]) => {
  const editor = window.medclipsegEditor;
  const triggersBefore = window.__benchTriggers.length;
  const started = performance.now();
  if (kind === "threshold") {
    const slider = document.querySelector("#editor .mse-threshold");
    slider.value = String(argument);
    slider.dispatchEvent(new Event("input", { bubbles: true }));
  } else {
    document.querySelector(`#editor [data-action="${argument}"]`).click();
  }
  const handled = performance.now();
  await new Promise((resolve) => requestAnimationFrame(() => resolve()));
  const framed = performance.now();
  const timings = editor.timings();
  let label, expected;
  if (kind === "threshold") {
    label = "Mask threshold / samples";
    expected = Number(argument).toFixed(2) + " /";
  } else {
    const runs = editor.maskRuns();
    let area = 0;
    for (let k = 1; k < runs.length; k += 2) area += runs[k];
    label = "Mask area";
    expected = area.toLocaleString("en-US") + " px";
  }
  const shown = () => { const text = window.__benchNumbersRow(label); return text !== null && text.startsWith(expected); };
  const arrived = await new Promise((resolve, reject) => {
    const target = document.querySelector("#numbers");
    const check = () => {
      if (window.__benchTriggers.length > triggersBefore && shown()) { observer.disconnect(); clearInterval(poll); resolve(performance.now()); }
    };
    const observer = new MutationObserver(check);
    observer.observe(target, { childList: true, subtree: true, characterData: true });
    const poll = setInterval(check, 5);  // the trigger fires without touching #numbers
    setTimeout(() => { observer.disconnect(); clearInterval(poll); reject(new Error(`no "${expected}" in ${label}`)); }, EVENT_TIMEOUT_MS);
  });
  const fired = window.__benchTriggers[window.__benchTriggers.length - 1];
  const posted = window.__benchJoins.find((at) => at >= fired);
  return {
    work_ms: kind === "threshold" ? timings.threshold_ms : timings.tool_ms,
    handler_ms: handled - started, frame_ms: framed - started, draw_ms: timings.draw_ms,
    encode_ms: timings.encode_ms, server_ms: arrived - fired, total_ms: arrived - started,
    debounce_ms: fired - handled, client_ms: posted === undefined ? null : posted - fired,
  };
}
""".replace("EVENT_TIMEOUT_MS", str(EVENT_TIMEOUT_MS))


# ------------------------------------------------------------------------------ the case


def smooth_noise(rng, height: int, width: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-spread noise with features about `scale` pixels across."""
    import cv2

    coarse_h, coarse_w = max(2, int(height / scale)), max(2, int(width / scale))
    coarse = rng.standard_normal((coarse_h, coarse_w)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def synthetic_case(side: int, seed: int = 0):
    """(image BGR uint8, probability float32) of a lesion-like scene: an irregular blob with a
    soft, uneven edge, a small satellite blob, and a textured background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    cy, cx, radius = 0.48 * side, 0.52 * side, 0.22 * side
    angle = np.arctan2(yy - cy, xx - cx)
    outline = radius * (1 + 0.15 * np.sin(3 * angle + 0.4) + 0.07 * np.sin(7 * angle + 1.3))
    signed = np.hypot(yy - cy, xx - cx) - outline
    satellite = np.hypot(yy - 0.2 * side, xx - 0.78 * side) - 0.05 * side
    distance = np.minimum(signed, satellite)
    softness = max(1.5, side / 160) * (1 + 0.6 * np.abs(smooth_noise(rng, side, side, side / 6)))
    logit = -distance / softness + 0.8 * smooth_noise(rng, side, side, side / 10)
    probability = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    tissue = 90 + 25 * smooth_noise(rng, side, side, side / 12) + 8 * rng.standard_normal((side, side))
    grey = np.clip(tissue + 70 * probability, 0, 255).astype(np.uint8)
    image = np.stack([grey, grey, np.clip(grey.astype(np.int16) + 6, 0, 255).astype(np.uint8)], axis=-1)
    return image, probability


def make_database(folder: Path, side: int):
    """A database (base version: the demo model) with one case of side x side; returns (db path, case id, prediction)."""
    db_path = folder / "annotations.db"
    store = app_support.demo_database(db_path)
    image, probability = synthetic_case(side)
    prediction = app_support.prediction_from_probability(
        probability, mutual_fraction=0.2, prompt="lesion", model_id=store.current_model_id())
    case = store.add_case(image, prompt="lesion", original_name=f"synthetic{side}.png", source="ingest")
    prediction_id = store.add_prediction(case.id, prediction)
    store.close()
    return db_path, case.id, prediction_id, image[..., ::-1], prediction


# ------------------------------------------------------------------------------ measurements


def median(values) -> float:
    return float(statistics.median(values)) if values else float("nan")


def baseline_ms(image_rgb, prediction, events: int) -> float:
    """The old server work per threshold change: overlay and heat map rendered and PNG-encoded."""
    from medclipseg.app.render import entropy_heatmap, overlay_mask, uncertain_region
    from medclipseg.io.png import encode_png

    times = []
    for index in range(events):
        threshold = THRESHOLDS[index % 2]
        started = time.perf_counter()
        mask = prediction.probability > threshold
        overlay = overlay_mask(image_rgb, mask, opacity=0.4, uncertain=uncertain_region(prediction.entropy, UNCERTAINTY))
        heatmap = entropy_heatmap(prediction.entropy, image_rgb=image_rgb, threshold_nats=UNCERTAINTY)
        encode_png(overlay[..., ::-1])
        encode_png(heatmap[..., ::-1])
        times.append((time.perf_counter() - started) * 1000.0)
    return median(times)


def in_process(db_path: Path, case_id: int, prediction_id: int, events: int) -> dict:
    """The handlers the server runs, called directly: open_case (and its value's size), editor_changed."""
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore
    from medclipseg.app import handlers
    from medclipseg.io.masks import mask_to_runs

    store = AnnotationStore(db_path)
    service = AnnotationService(store)
    try:
        opened = []
        for _ in range(3):
            started = time.perf_counter()
            screen = handlers.open_case(service, case_id, prediction_id, None)
            opened.append((time.perf_counter() - started) * 1000.0)
        payload_bytes = len(json.dumps(screen.editor, separators=(",", ":")).encode("utf-8"))
        session, prediction = screen.session, service.prediction(prediction_id)
        height, width = session.shape
        changed = []
        for index in range(events):
            threshold = THRESHOLDS[index % 2]
            value = {"kind": "edit", "case_id": case_id, "prediction_id": prediction_id, "base_version": None,
                     "threshold": threshold, "uncertainty_threshold": UNCERTAINTY, "width": width, "height": height,
                     "revision": index + 1, "saved_revision": 0, "dirty": True, "edited": False,
                     "runs": mask_to_runs(prediction.probability > threshold)}
            started = time.perf_counter()
            result = handlers.editor_changed(service, session, value, ANNOTATOR + "-inprocess")
            changed.append((time.perf_counter() - started) * 1000.0)
            if f"{threshold:.2f} /" not in (result.numbers or ""):
                raise RuntimeError(f"editor_changed did not answer for threshold {threshold}: {result.status}")
        return {"open_ms": median(opened), "payload_bytes": payload_bytes, "changed_ms": median(changed)}
    finally:
        service.close()
        store.close()


def profile_page(page, events: int) -> list:
    """Self time per page function (the DevTools CPU profile) over threshold and grow events."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Profiler.enable")
    cdp.send("Profiler.setSamplingInterval", {"interval": 200})
    cdp.send("Profiler.start")
    for index in range(events):
        page.evaluate(EVENT_SCRIPT, ["threshold", THRESHOLDS[index % 2]])
        page.evaluate(EVENT_SCRIPT, ["tool", "grow" if index % 2 == 0 else "undo"])
    profile = cdp.send("Profiler.stop")["profile"]
    cdp.detach()
    nodes = {node["id"]: node for node in profile["nodes"]}
    self_ms: dict = {}
    for node_id, delta in zip(profile["samples"], profile["timeDeltas"]):
        frame = nodes[node_id]["callFrame"]
        if frame["functionName"] in ("(idle)", "(program)", "(garbage collector)", "(root)"):
            key = frame["functionName"]
        else:
            key = f"{frame['functionName'] or '(anonymous)'}:{frame['lineNumber'] + 1}"
        self_ms[key] = self_ms.get(key, 0.0) + delta / 1000.0
    return sorted(self_ms.items(), key=lambda item: -item[1])


# Gradio's page code copies component values with Svelte's snapshot, which calls structuredClone
# once per number in an array: counted here per threshold event.
COUNT_CLONES = """
() => {
  const original = window.structuredClone;
  window.__benchClones = { calls: 0, ms: 0 };
  window.structuredClone = (value, options) => {
    const started = performance.now();
    const copy = original(value, options);
    window.__benchClones.calls++;
    window.__benchClones.ms += performance.now() - started;
    return copy;
  };
  return () => { window.structuredClone = original; };
}
"""


def count_clones(page, events: int) -> dict:
    page.evaluate(f"() => {{ window.__benchRestore = ({COUNT_CLONES})(); }}")
    for index in range(events):
        page.evaluate(EVENT_SCRIPT, ["threshold", THRESHOLDS[index % 2]])
    counted = page.evaluate("() => { window.__benchRestore(); return window.__benchClones; }")
    runs = page.evaluate("() => window.medclipsegEditor.maskRuns().length")
    return {"calls": counted["calls"] / events, "ms": counted["ms"] / events, "runs": runs}


def browser_run(url: str, events: int, profile: bool) -> dict:
    from playwright.sync_api import sync_playwright

    results = {"threshold": [], "grow/undo": [], "band/undo": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(app_support.CHROMIUM), headless=True,
                                             args=app_support.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.add_init_script(INIT_SCRIPT)
            page.goto(url)
            page.wait_for_selector("#next-case")
            page.wait_for_function("() => window.medclipsegEditor !== undefined")
            name_box = page.locator("#annotator textarea, #annotator input").first
            for _ in range(10):  # the page's load event may still write the remembered (empty) name
                name_box.fill(ANNOTATOR)
                page.wait_for_timeout(500)
                if name_box.input_value() == ANNOTATOR:
                    break
            page.evaluate("""() => {
                window.__benchOpen = { clicked: performance.now(), ready: null };
                const watcher = new MutationObserver(() => {
                  const root = window.__benchEditorRoot();
                  if (root && root.dataset.ready === "true" && window.__benchOpen.ready === null) {
                    window.__benchOpen.ready = performance.now(); watcher.disconnect();
                  }
                });
                watcher.observe(document.body, { attributes: true, subtree: true, attributeFilter: ["data-ready"] });
                document.querySelector("#next-case").click();
            }""")
            page.wait_for_function("() => window.__benchOpen.ready !== null", timeout=120_000)
            opened = page.evaluate("() => ({ ms: window.__benchOpen.ready - window.__benchOpen.clicked, "
                                   "open_ms: window.medclipsegEditor.timings().open_ms, "
                                   "state: window.medclipsegEditor.state() })")
            # The numbers of the opened case first, so the first event is not mixed up with them.
            page.wait_for_function("() => window.__benchNumbersRow('Mask area') !== null", timeout=60_000)
            for index in range(events):
                results["threshold"].append(page.evaluate(EVENT_SCRIPT, ["threshold", THRESHOLDS[index % 2]]))
            for index in range(events):
                action = "grow" if index % 2 == 0 else "undo"
                results["grow/undo"].append(dict(page.evaluate(EVENT_SCRIPT, ["tool", action]), action=action))
            for index in range(events):
                action = "band-fg" if index % 2 == 0 else "undo"
                results["band/undo"].append(dict(page.evaluate(EVENT_SCRIPT, ["tool", action]), action=action))
            profiled = profile_page(page, max(2, events // 4)) if profile else None
            clones = count_clones(page, max(2, events // 5)) if profile else None
        finally:
            browser.close()
    return {"opened": opened, "events": results, "profile": profiled, "clones": clones}


def summary(rows: list, key: str, action: str | None = None) -> float:
    return median([row[key] for row in rows if (action is None or row.get("action") == action)
                   and row.get(key) is not None])


def run_size(side: int, events: int, profile: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="medclipseg-editor-bench-") as folder, ExitStack() as stack:
        db_path, case_id, prediction_id, image_rgb, prediction = make_database(Path(folder), side)
        baseline = baseline_ms(image_rgb, prediction, events)
        direct = in_process(db_path, case_id, prediction_id, events)
        url, _ = stack.enter_context(app_support.app_server(db_path, log_path=Path(folder) / "server.log"))
        measured = browser_run(url, events, profile)
        state = measured["opened"]["state"]
        if (state["width"], state["height"]) != (side, side):
            raise RuntimeError(f"the editor opened a {state['width']}x{state['height']} case, not {side}x{side}")
    return {"side": side, "baseline_ms": baseline, **direct, **measured}


def report(result: dict) -> None:
    side, events = result["side"], result["events"]
    opened = result["opened"]
    print(f"\n== {side}x{side} ({side * side:,} px) ==")
    print(f"open: value {result['payload_bytes'] / 1e6:.2f} MB, next-case click -> data-ready {opened['ms']:.0f} ms "
          f"(open_case in-process {result['open_ms']:.0f} ms, page decode+draw {opened['open_ms']:.0f} ms)")
    print(f"{'event':<22}{'page work':>11}{'to frame':>10}{'server':>9}{'(posting)':>11}{'total-350':>11}")
    lines = [("threshold", "threshold", None), ("grow by 2", "grow/undo", "grow"), ("undo (of grow)", "grow/undo", "undo"),
             ("band -> foreground", "band/undo", "band-fg"), ("undo (of band)", "band/undo", "undo"),
             ("grow/undo, all", "grow/undo", None), ("band/undo, all", "band/undo", None)]
    for label, group, action in lines:
        rows = events[group]
        total = summary(rows, "total_ms", action) - DEBOUNCE_MS
        print(f"{label:<22}{summary(rows, 'work_ms', action):>9.1f}ms{summary(rows, 'frame_ms', action):>8.1f}ms"
              f"{summary(rows, 'server_ms', action):>7.0f}ms{summary(rows, 'client_ms', action):>9.0f}ms"
              f"{total:>9.0f}ms")
    print(f"editor_changed in-process (draft + numbers): {result['changed_ms']:.0f} ms")
    server = summary(events["threshold"], "server_ms")
    print(f"old server render per threshold change (overlay + heat map + 2 PNGs): {result['baseline_ms']:.0f} ms; "
          f"baseline / new server round trip = {result['baseline_ms'] / server:.1f}x")
    if result["profile"]:
        print("page CPU profile, self time (threshold and grow/undo events):")
        for name, ms in result["profile"][:12]:
            print(f"  {ms:8.1f} ms  {name}")
        clones = result["clones"]
        print(f"structuredClone per threshold event: {clones['calls']:,.0f} calls, {clones['ms']:.1f} ms "
              f"(the edit value holds {clones['runs']:,} runs)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1411", help="square image sides, comma-separated")
    parser.add_argument("--events", type=int, default=20, help="events timed per kind")
    parser.add_argument("--profile", action="store_true",
                        help="also print the page's CPU profile (always on when the page work exceeds 300 ms)")
    args = parser.parse_args(argv)
    sides = [int(text) for text in args.sizes.split(",") if text.strip()]
    if not app_support.CHROMIUM.exists():
        raise SystemExit(f"{app_support.CHROMIUM} is not installed (Debian's chromium package).")
    results = []
    for side in sides:
        result = run_size(side, args.events, args.profile)
        slow = summary(result["events"]["threshold"], "work_ms") > 300 or \
            summary(result["events"]["grow/undo"], "work_ms") > 300
        if slow and not args.profile:
            result = run_size(side, args.events, True)
        report(result)
        results.append(result)
    largest = max(results, key=lambda item: item["side"])
    print("\nsize       threshold page/server   tool (grow/undo) page/server   old render   speedup")
    for result in results:
        events = result["events"]
        threshold_page, threshold_server = summary(events["threshold"], "work_ms"), summary(events["threshold"], "server_ms")
        tool_page, tool_server = summary(events["grow/undo"], "work_ms"), summary(events["grow/undo"], "server_ms")
        print(f"{result['side']}x{result['side']:<6} {threshold_page:8.1f} / {threshold_server:5.0f} ms"
              f"      {tool_page:8.1f} / {tool_server:5.0f} ms        {result['baseline_ms']:6.0f} ms"
              f"   {result['baseline_ms'] / threshold_server:5.1f}x")
    events = largest["events"]
    print(f"page_threshold_ms={summary(events['threshold'], 'work_ms'):.1f} "
          f"page_tool_ms={summary(events['grow/undo'], 'work_ms'):.1f}")
    print(f"threshold_ms={summary(events['threshold'], 'server_ms'):.0f} "
          f"tool_ms={summary(events['grow/undo'], 'server_ms'):.0f} image={largest['side']}x{largest['side']}")


if __name__ == "__main__":
    main()
