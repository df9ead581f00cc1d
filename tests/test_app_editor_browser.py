"""The mask editor in a real browser (headless Debian Chromium, Playwright, a live `python app.py`).

Every case is put in the database with known maps before it is opened, so each expected mask is
computed here with numpy and scipy from the very maps the store holds (``load_prediction``), never
from the editor's own code. Pixels are addressed through the editor's view (``view()``: scale and
offset in CSS px), so a pointer event lands on the centre of a chosen image pixel.

Screenshots of the editor with a case open (1440 x 900 and 800 x 1000) go to MEDCLIPSEG_SCREENSHOTS
(default: the test's tmp folder).
"""
from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from scipy import ndimage

from app_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    app_server,
    browser_or_skip,
    db_rows,
    demo_database,
    ranked_case,
    screenshot_dir,
    soft_disk,
    soft_ring,
    wait_for_status,
)
from medclipseg.io.masks import mask_from_runs

SHAPE = (72, 96)          # rows, columns of every test image
BRUSH = 9                 # the editor's default brush size (image pixels)
RANKS = itertools.count(1_000)   # each new case ranks above every earlier one
# Requests to Gradio's queue wait while window.__joinDelay (ms) is set: the server seems slow.
SLOW_QUEUE_SCRIPT = """
window.__joinDelay = 0;
const originalFetch = window.fetch;
window.fetch = function (input, init) {
    const url = typeof input === "string" ? input : (input && input.url) || String(input);
    if (window.__joinDelay && url.includes("queue/join")) {
        const delay = window.__joinDelay;
        return new Promise((resolve) => setTimeout(resolve, delay)).then(() => originalFetch.call(window, input, init));
    }
    return originalFetch.call(window, input, init);
};
"""


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    browser_or_skip()
    folder = tmp_path_factory.mktemp("editor")
    db_path = folder / "db" / "annotations.db"
    store = demo_database(db_path)
    with app_server(db_path) as (url, _process):
        yield {"url": url, "db": db_path, "store": store}


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def new_page(browser, server, *, width=1440, height=1200, slow_queue=False):
    context = browser.new_context(viewport={"width": width, "height": height})
    if slow_queue:
        context.add_init_script(SLOW_QUEUE_SCRIPT)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server["url"])
    page.wait_for_selector("#next-case")
    return page


@pytest.fixture()
def page(browser, server):
    page = new_page(browser, server)
    yield page
    page.context.close()


# ------------------------------------------------------------------------------ helpers


def add_case(server, probability, name):
    """A case with this probability map, served next by the queue; returns (case id, stored prediction)."""
    store = server["store"]
    case_id, prediction_id = ranked_case(store, probability, rank=next(RANKS), name=name)
    return case_id, store.load_prediction(prediction_id)


def wait_for_case(page, case_id):
    page.wait_for_selector(f'#editor [data-case-id="{case_id}"][data-ready="true"]')


def open_next(page, annotator, case_id):
    page.fill("#annotator textarea", annotator)
    page.click("#next-case")
    wait_for_case(page, case_id)
    page.locator("#editor .mse-canvas").scroll_into_view_if_needed()


def editor_state(page) -> dict:
    return page.evaluate("window.medclipsegEditor.state()")


def editor_mask(page) -> np.ndarray:
    return mask_from_runs(page.evaluate("window.medclipsegEditor.maskRuns()"), SHAPE)


def client_point(page, x, y):
    """Viewport coordinates of the centre of image pixel (x, y)."""
    return page.evaluate("""([x, y]) => {
        const box = document.querySelector('#editor .mse-canvas').getBoundingClientRect();
        const view = window.medclipsegEditor.view();
        return [box.left + view.ox + (x + 0.5) * view.scale, box.top + view.oy + (y + 0.5) * view.scale];
    }""", [x, y])


def paint_row(page, y, x0, x1):
    """A drag along image row y from column x0 to x1 through every pixel centre."""
    page.mouse.move(*client_point(page, x0, y))
    page.mouse.down()
    for x in range(x0 + (1 if x1 > x0 else -1), x1 + (1 if x1 > x0 else -1), 1 if x1 > x0 else -1):
        page.mouse.move(*client_point(page, x, y))
    page.mouse.up()


def click_pixel(page, x, y, *, shift=False):
    point = client_point(page, x, y)
    if shift:
        page.keyboard.down("Shift")
    page.mouse.click(*point)
    if shift:
        page.keyboard.up("Shift")


def disks(centres, size=BRUSH, shape=SHAPE) -> np.ndarray:
    """Pixels whose centre lies within size/2 of one of the (x, y) centres: what the brush stamps."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    out = np.zeros(shape, bool)
    for x, y in centres:
        out |= (xx - x) ** 2 + (yy - y) ** 2 <= (size / 2) ** 2
    return out


def row_stroke(y, x0, x1, size=BRUSH) -> np.ndarray:
    return disks([(x, y) for x in range(min(x0, x1), max(x0, x1) + 1)], size)


def above(probability, threshold) -> np.ndarray:
    return np.asarray(probability, np.float32) > np.float32(threshold)


def set_range(page, css_class, value):
    page.locator(f"#editor .{css_class}").evaluate(
        "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }", str(value))


def corrections_of(server, case_id) -> list:
    rows = db_rows(server["db"], "SELECT version, annotator, status, mask_path, replaces_version FROM corrections "
                                 "WHERE case_id = ? ORDER BY version", (case_id,))
    return [dict(zip(("version", "annotator", "status", "mask_path", "replaces_version"), row)) for row in rows]


def stored_mask(server, mask_path) -> np.ndarray:
    return np.asarray(server["store"].load_mask(mask_path), bool)


def wait_until(condition, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def blur(page):
    page.evaluate("document.activeElement && document.activeElement.blur()")


# ------------------------------------------------------------------------------ tests


def test_strokes_stay_across_threshold_changes(server, page):
    case_id, prediction = add_case(server, soft_disk(SHAPE, (36, 48), 16, 5.0), "thresholds.png")
    open_next(page, "tina", case_id)
    p = prediction.probability
    assert np.array_equal(editor_mask(page), above(p, 0.5))

    paint_row(page, 10, 20, 70)   # across the top, mostly outside the disk
    stroke = row_stroke(10, 20, 70)
    assert np.array_equal(editor_mask(page), stroke | above(p, 0.5))
    for threshold in (0.3, 0.72):
        set_range(page, "mse-threshold", threshold)
        assert editor_state(page)["threshold"] == pytest.approx(threshold)
        assert np.array_equal(editor_mask(page), stroke | above(p, threshold))
    assert not np.array_equal(above(p, 0.3), above(p, 0.72))   # the slider really changed the model's part

    page.click("#editor [data-action=undo]")
    assert np.array_equal(editor_mask(page), above(p, 0.72))
    page.click("#editor [data-action=redo]")
    assert np.array_equal(editor_mask(page), stroke | above(p, 0.72))
    assert editor_state(page)["steps"] == 1


def test_painting_while_a_save_is_in_flight(browser, server):
    page = new_page(browser, server, slow_queue=True)
    try:
        case_id, prediction = add_case(server, soft_disk(SHAPE, (36, 48), 14, 2.0), "inflight.png")
        open_next(page, "ursula", case_id)
        model = above(prediction.probability, 0.5)
        paint_row(page, 8, 10, 40)
        first = row_stroke(8, 10, 40)
        page.wait_for_timeout(600)   # the draft of the first stroke has gone out
        # Long enough for the stroke below on a slow machine; the check after it proves the overlap.
        page.evaluate("window.__joinDelay = 4000")
        page.click("#save")
        started = time.monotonic()
        paint_row(page, 62, 60, 75)   # while the save waits
        second = row_stroke(62, 60, 75)
        assert corrections_of(server, case_id) == [], f"the save answered within {time.monotonic() - started:.1f} s"
        wait_for_status(page, "Saved correction v1")
        page.evaluate("window.__joinDelay = 0")

        assert np.array_equal(editor_mask(page), model | first | second)
        state = editor_state(page)
        assert state["revision"] > state["saved_revision"]
        assert page.evaluate("window.medclipsegEditor.isDirty()")
        [v1] = corrections_of(server, case_id)
        assert (v1["version"], v1["status"], v1["annotator"]) == (1, "corrected", "ursula")
        assert np.array_equal(stored_mask(server, v1["mask_path"]), model | first)

        # The second stroke stays a draft, now based on v1: a reload brings it back and saving it
        # makes v2 over v1 (a draft still based on "no version" would be refused as a conflict).
        wait_until(lambda: db_rows(server["db"], "SELECT base_version FROM drafts WHERE case_id = ? AND "
                                                 "annotator = ?", (case_id, "ursula")) == [(1,)],
                   what="the draft based on v1")
        page.on("dialog", lambda dialog: dialog.accept())
        page.reload()
        wait_for_case(page, case_id)
        assert np.array_equal(editor_mask(page), model | first | second)
        page.click("#save")
        wait_for_status(page, "Saved correction v2")
        v2 = corrections_of(server, case_id)[1]
        assert v2["replaces_version"] == 1
        assert np.array_equal(stored_mask(server, v2["mask_path"]), model | first | second)
    finally:
        page.context.close()


def test_accept_after_edits_saves_a_correction(server, page):
    disk = soft_disk(SHAPE, (36, 48), 14, 2.0)
    edited_id, prediction = add_case(server, disk, "accept-edited.png")
    open_next(page, "victor", edited_id)
    model = above(prediction.probability, 0.5)
    paint_row(page, 60, 10, 30)
    page.click("#accept")
    status = wait_for_status(page, "saved it as a correction")
    assert "Saved correction v1" in status
    [row] = corrections_of(server, edited_id)
    assert row["status"] == "corrected"
    assert np.array_equal(stored_mask(server, row["mask_path"]), model | row_stroke(60, 10, 30))

    plain_id, prediction = add_case(server, disk, "accept-plain.png")
    page.click("#next-case")
    wait_for_case(page, plain_id)
    page.click("#accept")
    wait_for_status(page, f"Case #{plain_id} accepted as predicted")
    [row] = corrections_of(server, plain_id)
    assert row["status"] == "accepted"
    assert np.array_equal(stored_mask(server, row["mask_path"]), above(prediction.probability, 0.5))

    saved_id, prediction = add_case(server, disk, "save-unchanged.png")
    page.click("#next-case")
    wait_for_case(page, saved_id)
    page.click("#save")
    wait_for_status(page, "no pixel changed")
    [row] = corrections_of(server, saved_id)
    assert row["status"] == "accepted"
    page.click("#save")
    wait_for_status(page, "Nothing saved")
    assert len(corrections_of(server, saved_id)) == 1


def test_reload_restores_the_unsaved_mask(server, page):
    case_id, prediction = add_case(server, soft_disk(SHAPE, (36, 48), 14, 2.0), "reload.png")
    open_next(page, "wendy", case_id)
    paint_row(page, 20, 60, 90)
    page.keyboard.press("e")   # and erase a piece of the disk
    paint_row(page, 36, 40, 50)
    painted = editor_mask(page)
    expected = (above(prediction.probability, 0.5) | row_stroke(20, 60, 90)) & ~row_stroke(36, 40, 50)
    assert np.array_equal(painted, expected)

    def draft():
        rows = db_rows(server["db"], "SELECT revision, pixels, mask_path FROM drafts WHERE case_id = ? AND "
                                     "annotator = ?", (case_id, "wendy"))
        return rows and rows[0][1] == int(expected.sum()) and rows[0]
    revision, _, mask_path = wait_until(draft, what="the draft")
    assert revision >= 1
    assert np.array_equal(stored_mask(server, mask_path), expected)

    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.type), dialog.accept()))
    page.reload()
    wait_for_case(page, case_id)
    assert np.array_equal(editor_mask(page), expected)
    assert page.input_value("#annotator textarea") == "wendy"
    assert page.evaluate("window.medclipsegEditor.isDirty()")   # restored edits are still unsaved
    assert dialogs in ([], ["beforeunload"])


def test_uncertainty_tools_change_exactly_the_right_pixels(server, page):
    # A ring (with a hole) on the left and a solid disk on the right.
    ring = soft_ring(SHAPE, (36, 26), 13, 5, 1.5)
    solid = soft_disk(SHAPE, (36, 72), 10, 2.0)
    case_id, prediction = add_case(server, np.maximum(ring, solid), "tools.png")
    open_next(page, "xavier", case_id)
    p, entropy = prediction.probability, np.asarray(prediction.entropy, np.float32)
    model = above(p, 0.5)
    band = entropy >= np.float32(0.35)
    assert np.array_equal(editor_mask(page), model)
    pieces, count = ndimage.label(model, structure=np.ones((3, 3)))
    assert count == 2
    solid_piece = pieces == pieces[36, 72]
    grow = ndimage.distance_transform_edt(~model)
    shrink = ndimage.distance_transform_edt(model)

    def check(action, expected):
        assert not np.array_equal(expected, model), action   # each tool here changes something
        action()
        assert np.array_equal(editor_mask(page), expected), page.inner_text("#editor .mse-message")
        page.click("#editor [data-action=undo]")
        assert np.array_equal(editor_mask(page), model)

    def button(name):
        return lambda: page.click(f"#editor [data-action={name}]")

    check(button("band-fg"), model | band)
    check(button("band-bg"), model & ~band)
    check(button("fill"), ndimage.binary_fill_holes(model))
    page.click("#editor [data-tool=component]")
    check(lambda: click_pixel(page, 72, 36), model & ~solid_piece)
    check(lambda: click_pixel(page, 72, 36, shift=True), solid_piece)
    page.locator("#editor .mse-grow").fill("3")
    check(button("grow"), grow <= 3)
    page.locator("#editor .mse-grow").fill("2")
    check(button("shrink"), model & (shrink > 2))

    # The threshold brush, one click on the soft edge of the disk: inside it, mask = p > 0.3.
    page.click("#editor [data-tool=local]")
    set_range(page, "mse-local", 0.3)
    x, y = 83, 36
    inside = disks([(x, y)])
    expected = np.where(inside, above(p, 0.3), model)
    assert (expected & ~model).any()
    check(lambda: click_pixel(page, x, y), expected)
    assert page.evaluate("window.medclipsegEditor.timings()")["tool_ms"] >= 0


def test_keyboard_shortcuts(server, page):
    disk = soft_disk(SHAPE, (36, 48), 14, 2.0)
    second_id, _ = add_case(server, disk, "keys-2.png")
    first_id, prediction = add_case(server, disk, "keys-1.png")   # ranked above the second
    open_next(page, "yvonne", first_id)
    model = above(prediction.probability, 0.5)
    blur(page)
    for key, tool in (("e", "erase"), ("t", "local"), ("c", "component"), ("h", "hand"), ("b", "brush")):
        page.keyboard.press(key)
        assert editor_state(page)["tool"] == tool
    page.keyboard.press("]")
    assert editor_state(page)["size"] == BRUSH + 1
    page.keyboard.press("[")
    page.keyboard.press("[")
    assert editor_state(page)["size"] == BRUSH - 1
    page.keyboard.press("]")
    assert editor_state(page)["size"] == BRUSH

    paint_row(page, 64, 20, 40)
    painted = model | row_stroke(64, 20, 40)
    assert np.array_equal(editor_mask(page), painted)
    page.keyboard.press("Control+z")
    assert np.array_equal(editor_mask(page), model)
    page.keyboard.press("Control+y")
    assert np.array_equal(editor_mask(page), painted)
    page.keyboard.press("Control+Shift+z")   # nothing left to redo
    page.keyboard.press("Control+z")
    page.keyboard.press("Control+Shift+z")
    assert np.array_equal(editor_mask(page), painted)
    assert page.input_value("#annotator textarea") == "yvonne"   # the editor's undo leaves the box alone

    assert editor_state(page)["overlay"] is True
    page.keyboard.press("o")
    assert editor_state(page)["overlay"] is False
    page.keyboard.press("o")
    assert editor_state(page)["overlay"] is True

    page.keyboard.press("s")
    wait_for_status(page, "Saved correction v1")
    [row] = corrections_of(server, first_id)
    assert np.array_equal(stored_mask(server, row["mask_path"]), painted)

    page.keyboard.press("n")
    wait_for_case(page, second_id)

    # Ctrl+Z while typing in the Annotator box belongs to the box, not to the editor. After a
    # reload the page fills the box itself, so the box has no typing of its own to undo.
    page.reload()
    wait_for_case(page, second_id)
    page.locator("#editor .mse-canvas").scroll_into_view_if_needed()
    paint_row(page, 64, 20, 40)
    page.evaluate("""() => { window.__keys = [];
        window.addEventListener('keydown', (event) => window.__keys.push([event.key, event.defaultPrevented])); }""")
    box = page.locator("#annotator textarea")
    box.click()
    page.keyboard.press("End")
    page.keyboard.press("Control+z")
    assert box.input_value() == "yvonne"
    assert editor_state(page)["steps"] == 1
    assert np.array_equal(editor_mask(page), model | row_stroke(64, 20, 40))
    page.keyboard.press("e")   # a letter typed in the box is text, not a tool
    assert editor_state(page)["tool"] == "brush"
    assert box.input_value() == "yvonnee"
    assert page.evaluate("window.__keys") == [["End", False], ["Control", False], ["z", False], ["e", False]]


def test_no_silent_overwrite_of_another_annotators_version(server, browser, page):
    store = server["store"]
    case_id, prediction = add_case(server, soft_disk(SHAPE, (36, 48), 14, 2.0), "conflict.png")
    open_next(page, "alice", case_id)
    model = above(prediction.probability, 0.5)

    # Meanwhile bob saves v1 of the same case (from another client).
    bobs = model.copy()
    bobs[4:14, 4:30] = True
    store.save_correction(case_id, bobs, annotator="bob", prediction_id=prediction_id_of(server, case_id),
                          threshold=0.5, base_version=None)

    page.click("#save")   # alice opened the case before bob's v1 existed
    status = wait_for_status(page, "Error")
    assert f"Case #{case_id} was saved as v1 by bob" in status
    assert [row["annotator"] for row in corrections_of(server, case_id)] == ["bob"]

    page.reload()   # alice takes the case again: bob's v1 is what she sees
    wait_for_case(page, case_id)
    assert np.array_equal(editor_mask(page), bobs)
    assert "v1" in page.inner_text("#history") and "bob" in page.inner_text("#history")
    page.locator("#editor .mse-canvas").scroll_into_view_if_needed()
    paint_row(page, 64, 40, 60)
    page.click("#save")
    status = wait_for_status(page, "Saved correction v2")
    assert "replaces v1" in status
    rows = corrections_of(server, case_id)
    assert [(row["version"], row["annotator"], row["replaces_version"]) for row in rows] == \
        [(1, "bob", None), (2, "alice", 1)]
    assert np.array_equal(stored_mask(server, rows[1]["mask_path"]), bobs | row_stroke(64, 40, 60))


def prediction_id_of(server, case_id) -> int:
    return server["store"].latest_prediction_id(case_id)


def test_leaving_unsaved_edits_asks(server, page):
    case_id, _ = add_case(server, soft_disk(SHAPE, (36, 48), 14, 2.0), "leave.png")
    open_next(page, "zoe", case_id)
    paint_row(page, 60, 10, 30)
    add_case(server, soft_disk(SHAPE, (30, 40), 10, 2.0), "leave-other.png")   # what Next would open
    dialogs = []
    page.once("dialog", lambda dialog: (dialogs.append((dialog.type, dialog.message)), dialog.dismiss()))
    page.click("#next-case")
    wait_for_status(page, f"Stayed on case #{case_id}")
    assert len(dialogs) == 1 and dialogs[0][0] == "confirm" and f"Case #{case_id}" in dialogs[0][1]
    assert page.evaluate("window.medclipsegEditor.caseId()") == case_id
    assert page.evaluate("window.medclipsegEditor.isDirty()")


def test_screenshots_of_the_editor(server, browser, tmp_path):
    folder = screenshot_dir(tmp_path)
    ring = soft_ring(SHAPE, (36, 26), 13, 5, 1.5)
    for width, height in ((1440, 900), (800, 1000)):
        case_id, _ = add_case(server, np.maximum(ring, soft_disk(SHAPE, (36, 72), 10, 2.0)), f"shot-{width}.png")
        page = new_page(browser, server, width=width, height=height)
        try:
            page.fill("#annotator textarea", f"shot{width}")
            page.click("#next-case")
            wait_for_case(page, case_id)
            page.wait_for_function("document.querySelector('#numbers').innerText.includes('Mask area')")
            page.screenshot(path=str(folder / f"editor-{width}x{height}.png"))
            page.screenshot(path=str(folder / f"editor-{width}x{height}-full.png"), full_page=True)
            box = page.locator("#editor .mse-canvas").bounding_box()
            assert box["width"] > 200 and box["height"] > 150
            assert editor_state(page)["scale"] > 2   # a 96 x 72 image is enlarged, not a thumbnail
        finally:
            page.context.close()
