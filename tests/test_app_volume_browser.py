"""A volume (MR scan) reviewed in the app's own mask editor, in a real browser (headless Debian
Chromium, Playwright, a live `python app.py` with the demo model).

A crop of the real MRIcron T1 is ingested through the Ingest tab as a NIfTI file and served by the
queue; the annotator scrolls to a slice with the wheel and the keys, paints a stroke there with the
brush, goes to another slice and back, reloads the page (the slice and the unsaved stroke come back),
saves, and the NIfTI export (the library's ``export_dataset``) is read back with nibabel: on the
painted slice the mask is exactly what the editor showed after the stroke, every other slice is the
model's own mask, on the scan's own voxel grid. The time of a slice change is printed, not asserted.

Screenshots of the saved case at 1440 x 900 and 800 px wide go to MEDCLIPSEG_SCREENSHOTS (default:
the test's tmp folder); scripts/screenshots_volume.py writes them to docs/images/.
"""
from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest

from app_support import (
    app_server,
    browser_or_skip,
    chromium_browser,
    db_rows,
    demo_database,
    ingest_scan_in_browser,
    new_app_page,
    screenshot_dir,
    wait_for_status,
)
from medclipseg.io.masks import mask_from_runs
from volume_support import real_t1

PROMPT = "brain tissue in the T1 MRI"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    browser_or_skip()
    folder = tmp_path_factory.mktemp("volume-editor")
    db_path = folder / "db" / "annotations.db"
    store = demo_database(db_path)
    scan = folder / "scans" / "t1-crop.nii.gz"
    scan.parent.mkdir()
    nib.save(real_t1(crop=True).nifti_image(), str(scan))
    with app_server(db_path, env={"MEDCLIPSEG_VOLUME_SAMPLES": "2"}) as (url, _process):
        yield {"url": url, "db": db_path, "store": store, "scan": scan, "folder": folder}


@pytest.fixture(scope="module")
def browser(server):
    with chromium_browser() as launched:
        yield launched


def new_page(browser, server, *, width=1440, height=900):
    return new_app_page(browser, server["url"], width=width, height=height)


@pytest.fixture(scope="module")
def volume_case(server, browser):
    """The scan ingested through the Ingest tab: (case id, geometry)."""
    case_id = ingest_scan_in_browser(browser, server["url"], server["db"], server["scan"], PROMPT, name_like="t1-crop%")
    return case_id, server["store"].volume_geometry(case_id)


# ------------------------------------------------------------------------------ helpers


def open_volume(page, annotator, case_id):
    page.fill("#annotator textarea", annotator)
    page.click("#next-case")
    page.wait_for_selector(f'#editor [data-case-id="{case_id}"][data-ready="true"]')
    page.wait_for_function("window.medclipsegEditor.volume() !== null")


def volume(page) -> dict:
    return page.evaluate("window.medclipsegEditor.volume()")


def wait_for_slice(page, index):
    page.wait_for_function("(i) => { const v = window.medclipsegEditor.volume(); "
                           "return v && v.index === i && v.target === null && !v.waiting; }", arg=index)


def editor_mask(page, geometry) -> np.ndarray:
    return mask_from_runs(page.evaluate("window.medclipsegEditor.maskRuns()"), (geometry.rows, geometry.columns))


def client_point(page, x, y):
    """Viewport coordinates of the centre of image pixel (x, y)."""
    return page.evaluate("""([x, y]) => {
        const box = document.querySelector('#editor .mse-canvas').getBoundingClientRect();
        const view = window.medclipsegEditor.view();
        return [box.left + view.ox + (x + 0.5) * view.scale, box.top + view.oy + (y + 0.5) * view.scale];
    }""", [x, y])


def timed_slice_change(page, index) -> float:
    """ms from goToSlice(index) to the slice drawn (the editor shows it and nothing is loading)."""
    return page.evaluate("""(i) => new Promise((resolve) => {
        const started = performance.now();
        window.medclipsegEditor.goToSlice(i);
        const check = () => {
            const v = window.medclipsegEditor.volume();
            if (v.index === i && v.target === null && !v.waiting) {
                requestAnimationFrame(() => resolve(performance.now() - started));
            } else {
                setTimeout(check, 1);
            }
        };
        check();
    })""", index)


def model_display_mask(store, case_id, geometry) -> np.ndarray:
    """The model's own volume mask (the prediction's threshold) as [slice, row, column]."""
    from medclipseg.annotation import volume_files

    row = store.prediction_row(store.latest_prediction_id(case_id))
    return volume_files.unmosaic(store.load_mask(row["mask_path"]).astype(bool), geometry)


# ------------------------------------------------------------------------------ the test


def test_scroll_paint_come_back_reload_save_and_export_nifti(server, browser, volume_case, tmp_path):
    from medclipseg.annotation.export import export_dataset

    case_id, geometry = volume_case
    store = server["store"]
    model = model_display_mask(store, case_id, geometry)
    page = new_page(browser, server)
    try:
        open_volume(page, "vera", case_id)
        start = volume(page)
        assert start["depth"] == geometry.depth == 40 and start["index"] == store.get_case(case_id).start_slice
        assert page.locator("#editor .mse-volume").is_visible()
        assert page.inner_text("#editor .mse-slice-value").startswith(f"{start['index'] + 1} / {geometry.depth}")
        assert page.locator("#editor .mse-strip").is_visible()
        assert f"slice {start['index'] + 1} / {geometry.depth}" in page.inner_text("#editor .mse-state")
        # Down the scan: two wheel notches over the image, then a key; each moves one slice.
        direction = 1 if start["index"] + 3 < geometry.depth else -1
        box = page.locator("#editor .mse-canvas").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        for _ in range(2):
            page.mouse.wheel(0, 100 * direction)
            time.sleep(0.05)
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.keyboard.press("ArrowDown" if direction > 0 else "ArrowUp")
        target = start["index"] + 3 * direction
        wait_for_slice(page, target)
        assert page.inner_text("#editor .mse-slice-value").startswith(f"{target + 1} / {geometry.depth}")
        assert page.input_value("#editor .mse-slice") == str(target + 1)
        assert np.array_equal(editor_mask(page, geometry), model[target])

        # A brush stroke along a row of this slice, through pixel centres (the brush is the default tool).
        before = editor_mask(page, geometry)
        y, x0, x1 = geometry.rows // 3, 4, geometry.columns - 5
        page.mouse.move(*client_point(page, x0, y))
        page.mouse.down()
        for x in range(x0 + 1, x1 + 1):
            page.mouse.move(*client_point(page, x, y))
        page.mouse.up()
        after = editor_mask(page, geometry)
        assert (after & ~before).sum() > 0 and not (before & ~after).any()   # painted, nothing erased
        assert after[y, x0:x1 + 1].all()

        # Ten slices away (a slice not cached, sent by the server) and back with the slider: the stroke is there.
        page.evaluate("document.activeElement && document.activeElement.blur()")
        far = target - 10 if target >= 10 else target + 10
        page.keyboard.press("PageUp" if far < target else "PageDown")
        wait_for_slice(page, far)
        assert np.array_equal(editor_mask(page, geometry), model[far])
        page.locator("#editor .mse-slice").fill(str(target + 1))
        wait_for_slice(page, target)
        assert np.array_equal(editor_mask(page, geometry), after)
        state = volume(page)
        assert target in state["edited"] and target in state["reviewed"]

        # Slice change time, goToSlice -> drawn: a cached neighbour, then a slice the server sends.
        neighbour = target + 1 if target + 1 < geometry.depth else target - 1
        near_ms = timed_slice_change(page, neighbour)
        uncached = [i for i in range(geometry.depth) if i not in volume(page)["cached"]]
        far_ms = timed_slice_change(page, uncached[len(uncached) // 2])
        back_ms = timed_slice_change(page, target)
        timings = page.evaluate("window.medclipsegEditor.timings()")
        round_trips = [t["round_trip_ms"] for t in volume(page)["timings"]]
        print(f"\nslice change (goToSlice -> drawn): cached neighbour {near_ms:.1f} ms, slice from the server "
              f"{far_ms:.1f} ms, back {back_ms:.1f} ms; editor's slice_shown_ms {timings.get('slice_shown_ms', 0):.1f}"
              f" ms; server round trips: median {np.median(round_trips):.1f} ms over {len(round_trips)}")
        assert np.array_equal(editor_mask(page, geometry), after)

        # A reload comes back to this slice with the unsaved stroke (the annotator's volume draft).
        page.wait_for_function("!window.medclipsegEditor.state().pending && !window.medclipsegEditor.volume().busy")
        time.sleep(1.0)   # the debounced change event reaches the server
        page.reload()
        page.wait_for_selector(f'#editor [data-case-id="{case_id}"][data-ready="true"]')
        assert volume(page)["index"] == target
        assert np.array_equal(editor_mask(page, geometry), after)

        page.click("#save")
        status = wait_for_status(page, "Saved correction v1")
        assert "slices reviewed" in status
        page.wait_for_function("document.querySelector('#history').innerText.includes('slices')")
        # Screenshots: the saved case open on the painted slice, on a laptop screen and 800 px wide.
        for width, height in ((1440, 900), (800, 1000)):
            page.set_viewport_size({"width": width, "height": height})
            page.evaluate("window.scrollTo(0, 0)")
            time.sleep(0.5)
            for selector in ("#editor .mse-slice", "#editor .mse-strip", "#editor .mse-slice-value", "#save"):
                shown = page.locator(selector).bounding_box()
                assert shown and 0 <= shown["y"] and shown["y"] + shown["height"] <= height, (width, selector, shown)
                assert 0 <= shown["x"] and shown["x"] + shown["width"] <= width, (width, selector, shown)
            page.screenshot(path=str(screenshot_dir(tmp_path) / f"volume-case-{width}.png"))
            canvas = page.locator("#editor .mse-canvas").bounding_box()
            assert page.locator("#editor .mse-strip").bounding_box()["width"] > 0.4 * canvas["width"]
    finally:
        page.context.close()

    rows = db_rows(server["db"], "SELECT version, annotator, status, reviewed_slices FROM corrections "
                                 "WHERE case_id = ?", (case_id,))
    assert len(rows) == 1 and rows[0][:3] == (1, "vera", "corrected")
    assert target in json.loads(rows[0][3])

    out = tmp_path / "export"
    result = export_dataset(store, out, volume_format="nifti", val_fraction=0.0, test_fraction=0.0)
    entry = next(e for e in json.loads(result.manifest_path.read_text())["cases"] if e["case_id"] == case_id)
    exported = nib.load(str(out / entry["files"]["mask"]))
    original = nib.load(str(server["scan"]))
    assert exported.shape == original.shape and np.allclose(exported.affine, original.affine, atol=1e-5)
    on_file = np.asarray(exported.dataobj) > 0
    scan = store.load_volume(case_id)
    expected = model.copy()
    expected[target] = after
    on_display = scan.to_display(on_file, plane=geometry.plane)
    assert np.array_equal(on_display[target], after)
    assert np.array_equal(on_display, expected)   # nothing else changed
    # The same on the file's own grid, the display mask mapped back with from_display.
    assert np.array_equal(on_file, scan.from_display(expected, plane=geometry.plane))
