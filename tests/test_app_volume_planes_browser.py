"""The three planes of a volume in the app's mask editor, in a real browser (headless Debian Chromium,
Playwright, a live `python app.py` with the demo model).

A crop of the real MRIcron T1, written with 2.5 mm between its axial slices, is ingested through the
Ingest tab. The annotator sees the axial, coronal and sagittal panes (each drawn at its voxels'
aspect ratio), makes the sagittal pane the one being edited, paints a stroke there, moves the
crosshair onto the axial slice the stroke crosses, and finds the painted voxels in the axial pane
exactly where the sagittal stroke put them. Plane switch and crosshair times are printed.

Screenshots at 1440 x 900 and 800 px wide go to MEDCLIPSEG_SCREENSHOTS (default: the test's tmp
folder) as volume-planes-1440.png and volume-planes-800.png; scripts/screenshots_volume.py writes
them to docs/images/.
"""
from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest

from app_support import (
    app_server,
    browser_or_skip,
    chromium_browser,
    demo_database,
    ingest_scan_in_browser,
    new_app_page,
    screenshot_dir,
)
from medclipseg.io.masks import mask_from_runs
from volume_support import real_t1

PROMPT = "brain tissue in the T1 MRI"
SLICE_MM = 2.5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    browser_or_skip()
    folder = tmp_path_factory.mktemp("volume-planes")
    db_path = folder / "db" / "annotations.db"
    store = demo_database(db_path)
    scan = folder / "scans" / "t1-thick.nii.gz"
    scan.parent.mkdir()
    volume = real_t1(crop=True)
    affine = volume.affine.copy()
    affine[:3, 2] *= SLICE_MM      # the third voxel axis (inferior-superior here) 2.5 mm apart
    volume.affine = affine
    nib.save(volume.nifti_image(), str(scan))
    with app_server(db_path, env={"MEDCLIPSEG_VOLUME_SAMPLES": "2"}) as (url, _process):
        yield {"url": url, "db": db_path, "store": store, "scan": scan}


@pytest.fixture(scope="module")
def browser(server):
    with chromium_browser() as launched:
        yield launched


def new_page(browser, server, *, width=1440, height=900):
    return new_app_page(browser, server["url"], width=width, height=height)


@pytest.fixture(scope="module")
def volume_case(server, browser):
    """The scan ingested through the Ingest tab: (case id, geometry)."""
    case_id = ingest_scan_in_browser(browser, server["url"], server["db"], server["scan"], PROMPT, name_like="t1-thick%")
    return case_id, server["store"].volume_geometry(case_id)


def planes(page) -> dict:
    return page.evaluate("window.medclipsegEditor.planes()")


def wait_for_planes(page, active=None):
    """Every pane shows the slice through the crosshair, fresh, with its strip; nothing is on its way."""
    page.wait_for_function("""(active) => {
        const p = window.medclipsegEditor.planes();
        if (!p || (active && p.active !== active) || p.busy || p.pending_planes.length) return false;
        return Object.values(p.panes).every((pane) => pane.fresh && !pane.loading && pane.strip &&
                                                      pane.shown === pane.index);
    }""", arg=active)


def pane_mask(page, plane, shape) -> np.ndarray:
    return mask_from_runs(page.evaluate("(p) => window.medclipsegEditor.paneMaskRuns(p)", plane), shape)


def pane_point(page, plane, x, y):
    """Viewport coordinates of the centre of pixel (x, y) of a pane's slice."""
    return page.evaluate("""([plane, x, y]) => {
        const v = window.medclipsegEditor.paneView(plane);
        return [v.left + v.ox + (x + 0.5) * v.scale, v.top + v.oy + (y + 0.5) * v.scale * v.aspect];
    }""", [plane, x, y])


def timed(page, script, arg, done) -> float:
    """ms from running ``script`` to ``done`` being true and the next frame drawn."""
    return page.evaluate("""([script, arg, done]) => new Promise((resolve) => {
        const started = performance.now();
        new Function("arg", script)(arg);
        const check = () => {
            if (new Function(done)()) requestAnimationFrame(() => resolve(performance.now() - started));
            else setTimeout(check, 1);
        };
        check();
    })""", [script, arg, done])


def model_display_mask(store, case_id, geometry) -> np.ndarray:
    from medclipseg.annotation import volume_files

    row = store.prediction_row(store.latest_prediction_id(case_id))
    return volume_files.unmosaic(store.load_mask(row["mask_path"]).astype(bool), geometry)


def test_paint_in_the_sagittal_plane_and_see_it_in_the_axial(server, browser, volume_case, tmp_path):
    case_id, geometry = volume_case
    store = server["store"]
    model = model_display_mask(store, case_id, geometry)
    depth, rows, columns = geometry.display_shape
    assert geometry.plane == "axial" and geometry.display_spacing[0] == pytest.approx(SLICE_MM)
    page = new_page(browser, server)
    try:
        page.fill("#annotator textarea", "paula")
        page.click("#next-case")
        page.wait_for_selector(f'#editor [data-case-id="{case_id}"][data-ready="true"]')
        wait_for_planes(page, "axial")
        state = planes(page)
        assert [state["panes"][p]["depth"] for p in ("axial", "coronal", "sagittal")] == [depth, rows, columns]
        # Coronal and sagittal pixels are 2.5 mm high and 1 mm wide: drawn 2.5 times as high as wide.
        assert state["panes"]["sagittal"]["aspect"] == pytest.approx(SLICE_MM)
        assert state["panes"]["coronal"]["aspect"] == pytest.approx(SLICE_MM)
        assert state["panes"]["axial"]["aspect"] == pytest.approx(1.0)
        for plane in ("axial", "coronal", "sagittal"):
            assert page.locator(f'#editor .mse-pane[data-plane="{plane}"] .mse-plane-canvas').is_visible()
            assert page.locator(f'#editor .mse-pane[data-plane="{plane}"] .mse-pane-strip').is_visible()
        sagittal_box = page.locator('#editor .mse-pane[data-plane="sagittal"] .mse-plane-canvas').bounding_box()
        view = page.evaluate("window.medclipsegEditor.paneView('sagittal')")
        drawn_height = depth * view["scale"] * view["aspect"]
        assert drawn_height <= sagittal_box["height"] + 1 and rows * view["scale"] <= sagittal_box["width"] + 1

        # The crosshair tool: a click in the coronal pane moves the sagittal plane to the voxel's column.
        page.keyboard.press("x")
        column = columns // 2 + 3
        page.mouse.click(*pane_point(page, "coronal", column, depth // 2))
        wait_for_planes(page, "axial")
        state = planes(page)
        assert state["panes"]["sagittal"]["index"] == column and state["point"][2] == column
        assert state["point"][0] == depth - 1 - depth // 2   # coronal rows run from the top (superior) down

        # A pane clicked with the brush becomes the one being edited; then a stroke along one of its rows.
        page.keyboard.press("b")
        switch_ms = timed(page, "document.querySelector('#editor .mse-pane[data-plane=\"sagittal\"] .mse-pane-head').click()",
                          None, "const p = window.medclipsegEditor.planes(); return p.active === 'sagittal' && "
                                "!p.panes.sagittal.loading")
        wait_for_planes(page, "sagittal")
        sagittal_shape = (depth, rows)
        before = pane_mask(page, "sagittal", sagittal_shape)
        assert np.array_equal(before, model[::-1, :, column])   # sagittal [inferior, posterior] of this column
        y, x0, x1 = depth // 3, 4, rows - 5
        page.mouse.move(*pane_point(page, "sagittal", x0, y))
        page.mouse.down()
        for x in range(x0 + 1, x1 + 1):
            page.mouse.move(*pane_point(page, "sagittal", x, y))
        page.mouse.up()
        after = pane_mask(page, "sagittal", sagittal_shape)
        assert after[y, x0:x1 + 1].all() and not (before & ~after).any()
        crossing = depth - 1 - y                                  # the axial slice of that sagittal row

        # The crosshair onto that axial slice: the axial pane shows the stroke as a line along the column.
        point = planes(page)["point"]
        crosshair_ms = timed(page, "window.medclipsegEditor.moveCrosshair(arg)", [crossing, point[1], point[2]],
                             "const p = window.medclipsegEditor.planes(); return p.panes.axial.index === "
                             f"{crossing} && p.panes.axial.fresh && !p.panes.axial.loading")
        wait_for_planes(page, "sagittal")
        axial = pane_mask(page, "axial", (rows, columns))
        expected = model[crossing].copy()
        expected[:, column] = after[y]                            # sagittal columns run posterior like axial rows
        assert np.array_equal(axial, expected)
        assert (expected & ~model[crossing]).sum() > 0
        print(f"\nplane switch {switch_ms:.1f} ms, crosshair move to another axial slice {crosshair_ms:.1f} ms; "
              f"plane requests: median {np.median([t['round_trip_ms'] for t in planes(page)['timings']]):.1f} ms")

        # The axial pane edited again: its slice is the server's, with the stroke.
        page.click('#editor .mse-pane[data-plane="axial"] .mse-pane-head')
        page.wait_for_function(f"(() => {{ const v = window.medclipsegEditor.volume(); return v.index === {crossing}"
                               " && v.target === null; })()")
        editor = mask_from_runs(page.evaluate("window.medclipsegEditor.maskRuns()"), (rows, columns))
        assert np.array_equal(editor, expected)
        assert crossing in page.evaluate("window.medclipsegEditor.volume()")["edited"]

        # Screenshots: the three planes at 1440 x 900 (the sagittal pane edited), then one plane at 800 px.
        page.click('#editor .mse-pane[data-plane="sagittal"] .mse-pane-head')
        wait_for_planes(page, "sagittal")
        for width, height in ((1440, 900), (800, 1000)):
            page.set_viewport_size({"width": width, "height": height})
            page.evaluate("window.scrollTo(0, 0)")
            time.sleep(0.6)
            selectors = ["#editor .mse-slice", "#editor .mse-strip", "#save"]
            selectors += ["#editor .mse-plane-switch"] if width < 900 else \
                [f'#editor .mse-pane[data-plane="{p}"] .mse-pane-strip' for p in ("axial", "coronal", "sagittal")]
            for selector in selectors:
                shown = page.locator(selector).bounding_box()
                assert shown and 0 <= shown["y"] and shown["y"] + shown["height"] <= height, (width, selector, shown)
                assert 0 <= shown["x"] and shown["x"] + shown["width"] <= width, (width, selector, shown)
            if width < 900:
                assert not page.locator('#editor .mse-pane[data-plane="axial"] .mse-plane-canvas').is_visible()
            page.screenshot(path=str(screenshot_dir(tmp_path) / f"volume-planes-{width}.png"))
        page.click('#editor .mse-plane-switch button[data-plane="coronal"]')
        wait_for_planes(page, "coronal")
        assert page.locator('#editor .mse-pane[data-plane="coronal"] .mse-plane-canvas').is_visible()
    finally:
        page.context.close()
