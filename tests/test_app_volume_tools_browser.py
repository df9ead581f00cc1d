"""The volume tools in the app's mask editor, in a real browser (headless Debian Chromium, Playwright,
a live `python app.py`) on a volume whose model the test controls (tests/volume_tool_support.py): a
disc growing from slice to slice, the model unsure (p = 0.5 round the edge) on slice UNSURE + 1.

The annotator paints two slices with the brush and presses Interpolate: the slices between them equal
the signed-distance interpolation computed here. Ctrl+Z gives back the exact mask, Ctrl+Shift+Z the
interpolation again. Propagation upwards stops on the slice where the model was made unsure and says
why, with a button that goes there. A reload restores the draft with its provenance.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from app_support import (
    app_server,
    axial_stroke,
    browser_or_skip,
    chromium_browser,
    demo_database,
    demo_model_id,
    go_to_slice,
    new_app_page,
)
from medclipseg.annotation import volume_files
from medclipseg.io.masks import mask_from_runs
from volume_tool_support import COLUMNS, DEPTH, ROWS, UNSURE, controlled_case, display_maps

NAME = "tina"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    browser_or_skip()
    folder = tmp_path_factory.mktemp("volume-tools")
    db_path = folder / "db" / "annotations.db"
    store = demo_database(db_path)
    case, prediction_id, _ = controlled_case(store, model_id=demo_model_id())
    with app_server(db_path) as (url, _process):
        yield {"url": url, "store": store, "case_id": case.id, "geometry": store.volume_geometry(case.id)}


@pytest.fixture(scope="module")
def page(server):
    with chromium_browser() as browser:
        yield new_app_page(browser, server["url"])


def editor_mask(page) -> np.ndarray:
    return mask_from_runs(page.evaluate("window.medclipsegEditor.maskRuns()"), (ROWS, COLUMNS))


go_to = go_to_slice


def stroke(page, y: int, x0: int, x1: int) -> None:
    axial_stroke(page, y, x0, x1, step=2)


def run_step(page, action) -> None:
    """Do ``action`` (a volume step) and wait until the editor has its answer."""
    done = int(page.evaluate("document.querySelector('#editor [data-case-id]').dataset.toolDone || '0'"))
    action()
    page.wait_for_function(f"Number(document.querySelector('#editor [data-case-id]').dataset.toolDone || 0) > {done}")


def draft_volume(server) -> np.ndarray:
    draft = server["store"].draft(server["case_id"], NAME)
    return volume_files.unmosaic(draft.mask, server["geometry"]).astype(bool)


def sdf(mask2d):
    return ndimage.distance_transform_edt(~mask2d) - ndimage.distance_transform_edt(mask2d)


def open_case(page, server) -> None:
    page.wait_for_selector(f'#editor [data-case-id="{server["case_id"]}"][data-ready="true"]')
    page.wait_for_function("(() => { const v = window.medclipsegEditor.volume(); return v && !v.busy; })()")


def test_interpolate_undo_propagate_and_reload(server, page):
    probability = display_maps()[0]
    model = probability > 0.5
    page.goto(server["url"])
    page.wait_for_selector("#next-case")
    page.fill("#annotator textarea", NAME)
    page.click("#next-case")
    open_case(page, server)
    assert page.locator("#editor .mse-volume-tools").is_visible()

    # Two slices painted with the brush, then Interpolate.
    go_to(page, 2)
    stroke(page, 24, 8, 40)
    low = editor_mask(page)
    go_to(page, 8)
    stroke(page, 10, 14, 34)
    high = editor_mask(page)
    assert (low & ~model[2]).any() and (high & ~model[8]).any()
    run_step(page, lambda: page.click('#editor [data-volume-action="interpolate"]'))
    volume = draft_volume(server)
    for index in range(3, 8):
        t = (index - 2) / 6
        assert np.array_equal(volume[index], (1 - t) * sdf(low) + t * sdf(high) < 0), index
    provenance = page.evaluate("window.medclipsegEditor.provenance()")
    assert [i for i, p in enumerate(provenance) if p == "drawn"] == [2, 8]
    assert [i for i, p in enumerate(provenance) if p == "interpolated"] == [3, 4, 5, 6, 7]
    go_to(page, 5)
    assert np.array_equal(editor_mask(page), volume[5])
    assert "interpolated" in page.locator("#editor .mse-slice-value").inner_text()
    assert "5 interpolated" in page.locator("#editor .mse-progress-text").inner_text()

    # Undo (Ctrl+Z): the exact mask before the interpolation; redo brings it back.
    before = model.copy()
    before[2], before[8] = low, high
    page.locator("#editor .mse-canvas").hover()
    run_step(page, lambda: page.keyboard.press("Control+z"))
    undone = draft_volume(server)
    assert np.array_equal(undone, before), [(i, undone[i].sum(), before[i].sum(), volume[i].sum()) for i in range(DEPTH) if not np.array_equal(undone[i], before[i])]
    assert np.array_equal(editor_mask(page), model[5])
    run_step(page, lambda: page.keyboard.press("Control+Shift+z"))
    assert np.array_equal(draft_volume(server), volume)

    # Propagation up from slice 9's drawn neighbour: it stops on the slice where the model is unsure.
    go_to(page, 8)
    page.fill("#editor .mse-stop-entropy", "0.3")
    page.fill("#editor .mse-stop-area", "")
    run_step(page, lambda: page.click('#editor [data-volume-action="propagate-up"]'))
    stops = page.evaluate("window.medclipsegEditor.stops()")
    assert [(s["slice"], s["code"]) for s in stops] == [(UNSURE, "uncertain")], stops
    assert f"stopped at slice {UNSURE + 1}" in page.locator("#editor .mse-message").inner_text()
    assert np.array_equal(draft_volume(server)[UNSURE - 1], model[UNSURE - 1])
    page.click(f'#editor .mse-stops button[data-slice="{UNSURE}"]')
    page.wait_for_function(f"window.medclipsegEditor.volume().index === {UNSURE}")

    # "Next uncertain slice" (U) from slice 1 goes to the slice the model is unsure about.
    go_to(page, 0)
    page.keyboard.press("u")
    page.wait_for_function(f"window.medclipsegEditor.volume().index === {UNSURE}")

    # A reload restores the draft with its provenance.
    saved = draft_volume(server)
    page.reload()
    page.wait_for_selector("#next-case")
    open_case(page, server)
    provenance = page.evaluate("window.medclipsegEditor.provenance()")
    assert [i for i, p in enumerate(provenance) if p == "interpolated"] == [3, 4, 5, 6, 7]
    assert [i for i, p in enumerate(provenance) if p == "propagated"] == list(range(9, UNSURE))
    assert server["store"].draft(server["case_id"], NAME).slice_provenance["drawn"] == [2, 8]
    go_to(page, 4)
    assert np.array_equal(editor_mask(page), saved[4])
    assert DEPTH == len(provenance)

    # Moving the mask threshold on a slice reviews it but does not make it a drawn slice (an
    # interpolation anchor): only strokes and tools do.
    go_to(page, 1)
    page.evaluate("""() => { const slider = document.querySelector('#editor .mse-threshold');
        slider.value = '0.3'; slider.dispatchEvent(new Event('input', { bubbles: true })); }""")
    go_to(page, 12)
    page.wait_for_function("window.medclipsegEditor.volume().pending.size === 0 || "
                           "!window.medclipsegEditor.volume().busy")
    run_step(page, lambda: page.click('#editor [data-volume-action="interpolate"]'))
    provenance = page.evaluate("window.medclipsegEditor.provenance()")
    assert provenance[1] != "drawn" and [i for i, p in enumerate(provenance) if p == "drawn"] == [2, 8]
