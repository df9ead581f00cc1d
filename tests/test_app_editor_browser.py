"""The mask editor in a real browser (headless Debian Chromium, Playwright, a live `python app.py`).

Every case is put in the database with known maps before it is opened, so each expected mask is
computed here with numpy and scipy from the very maps the store holds (``load_prediction``), never
from the editor's own code. Pixels are addressed through the editor's view (``view()``: scale and
offset in CSS px), so a pointer event lands on the centre of a chosen image pixel.

Screenshots of the editor with a case open (1440 x 900 and 800 px wide: the page, the name lock, a
model that found nothing, the skip confirmation) go to MEDCLIPSEG_SCREENSHOTS (default: the test's tmp
folder); docs/images/ keeps the ones the README shows.
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
    ROOT,
    app_server,
    browser_or_skip,
    db_rows,
    demo_database,
    open_tab,
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
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_selector(f'#editor [data-case-id="{case_id}"][data-ready="true"]')
    except PlaywrightTimeout:
        shown = page.evaluate("(document.querySelector('#editor [data-case-id]') || {dataset: {}}).dataset.caseId")
        raise AssertionError(f"case {case_id} was not opened; the editor shows case {shown!r}, "
                             f"the status line says {page.inner_text('#status')!r}") from None


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
    """A move of one of the editor's sliders: its input event, then the change event of letting it go."""
    page.locator(f"#editor .{css_class}").evaluate(
        "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true}));"
        " el.dispatchEvent(new Event('change', {bubbles: true})); }", str(value))


def drag_range(page, css_class, values):
    """A drag of a slider through ``values``: an input event at each, one change event at the end."""
    page.locator(f"#editor .{css_class}").evaluate(
        """(el, values) => {
            for (const v of values) { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }
            el.dispatchEvent(new Event('change', {bubbles: true})); }""", [str(v) for v in values])


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


def rank_order(page):
    """Choose the queue's plain rank order (the one add_case ranks by, without the diverse pick, which
    may serve a lower-ranked case first), so that the order of the cases served is known here."""
    from app_support import RANK_ORDER
    from medclipseg.annotation.queue import ACQUISITIONS

    key = ACQUISITIONS[RANK_ORDER].score_key
    label = next(a.label for a in ACQUISITIONS.values() if a.score_key == key and not a.diverse)
    open_tab(page, "Queue")
    page.get_by_label("Rank unreviewed cases by").click()
    page.get_by_role("option", name=label, exact=True).click()
    open_tab(page, "Image")


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

    # Undo takes the threshold moves back first, one at a time, then the stroke; redo replays all three.
    assert editor_state(page)["steps"] == 3
    page.click("#editor [data-action=undo]")
    assert editor_state(page)["threshold"] == pytest.approx(0.3)
    assert np.array_equal(editor_mask(page), stroke | above(p, 0.3))
    page.click("#editor [data-action=undo]")
    assert editor_state(page)["threshold"] == pytest.approx(0.5)
    assert page.input_value("#editor .mse-threshold") == "0.5"   # the slider follows
    assert np.array_equal(editor_mask(page), stroke | above(p, 0.5))
    page.click("#editor [data-action=undo]")
    assert np.array_equal(editor_mask(page), above(p, 0.5))
    for _ in range(3):
        page.click("#editor [data-action=redo]")
    assert editor_state(page)["threshold"] == pytest.approx(0.72)
    assert np.array_equal(editor_mask(page), stroke | above(p, 0.72))
    assert editor_state(page)["steps"] == 3


def test_a_threshold_drag_is_one_undo_step_before_the_stroke(server, page):
    case_id, prediction = add_case(server, soft_disk(SHAPE, (36, 48), 16, 5.0), "threshold-undo.png")
    rank_order(page)
    open_next(page, "tilda", case_id)
    p = prediction.probability
    paint_row(page, 10, 20, 70)
    stroke = row_stroke(10, 20, 70)
    drag_range(page, "mse-threshold", [0.48, 0.44, 0.4, 0.35, 0.3])
    assert editor_state(page)["steps"] == 2
    blur(page)
    page.keyboard.press("Control+z")   # the threshold comes back; the stroke stays
    assert editor_state(page)["threshold"] == pytest.approx(0.5)
    assert np.array_equal(editor_mask(page), stroke | above(p, 0.5))
    assert "mask threshold back to 0.50" in page.inner_text("#editor .mse-message")
    page.keyboard.press("Control+y")
    assert editor_state(page)["threshold"] == pytest.approx(0.3)
    assert np.array_equal(editor_mask(page), stroke | above(p, 0.3))
    # A stroke after a move: undo takes the stroke back, then the move.
    paint_row(page, 60, 20, 40)
    page.keyboard.press("Control+z")
    assert np.array_equal(editor_mask(page), stroke | above(p, 0.3))
    page.keyboard.press("Control+z")
    assert editor_state(page)["threshold"] == pytest.approx(0.5)


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


# ------------------------------------------------------------------------------ the page around the editor

EXAMPLE = ROOT / "assets" / "examples" / "breast_ultrasound.png"


def segment_example(page, prompt):
    """Upload the breast ultrasound example and segment it with ``prompt``; returns the case id shown."""
    page.set_input_files("#upload input[type=file]", str(EXAMPLE))
    page.wait_for_selector("#preview img", state="attached")
    page.fill("#prompt textarea", prompt)
    page.click("#segment")
    wait_for_status(page, "Segmented", timeout=90_000)
    page.wait_for_selector('#editor [data-ready="true"]')
    return page.evaluate("window.medclipsegEditor.caseId()")


def box_of(page, selector) -> dict:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not shown"
    return box


def on_screen(box, viewport) -> bool:
    return box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"] and box["x"] >= 0 and \
        box["x"] + box["width"] <= viewport["width"]


# One case per width (the store keeps one case per image and prompt).
PROMPTS = {1440: "Breast ultrasound scan showing one medium oval-shaped benign lesion in the centre.",
           800: "One medium oval benign lesion in the breast ultrasound scan."}


@pytest.mark.parametrize("width", [1440, 800])
def test_buttons_whole_image_and_status_fit_on_one_screen(server, browser, tmp_path, width):
    viewport = {"width": width, "height": 900}
    page = new_page(browser, server, width=width, height=900)
    try:
        page.fill("#annotator textarea", f"fit{width}")
        segment_example(page, PROMPTS[width])
        assert page.evaluate("window.scrollY") == 0   # nothing scrolled to show the case
        canvas = box_of(page, "#editor .mse-canvas")
        buttons = [box_of(page, f"#{name}") for name in ("accept", "save", "skip", "next-case")]
        if width >= 1440:
            # The case's buttons, the canvas (the whole image: the view is fitted to it) and the status
            # of the last action (the page's line under the buttons, the editor's lines under the canvas).
            for box in buttons + [canvas, box_of(page, "#status"), box_of(page, "#editor .mse-message"),
                                  box_of(page, "#editor .mse-state")]:
                assert on_screen(box, viewport), (box, canvas)
            assert canvas["height"] >= 400
        else:
            # One column: a compact case bar, then the editor, before the image panel.
            assert canvas["y"] < viewport["height"] - 200, canvas
            assert all(on_screen(box, viewport) for box in buttons)
            assert canvas["y"] < box_of(page, "#prompt")["y"]
            assert canvas["width"] > 600
        view = page.evaluate("window.medclipsegEditor.view()")
        state = editor_state(page)
        assert view["oy"] >= 0 and view["oy"] + state["height"] * view["scale"] <= canvas["height"] + 1
        assert view["ox"] >= 0 and view["ox"] + state["width"] * view["scale"] <= canvas["width"] + 1

        drag = page.locator("#editor .mse-canvas").bounding_box()   # a stroke out of the lesion's lower right
        page.mouse.move(drag["x"] + drag["width"] * 0.6, drag["y"] + drag["height"] * 0.6)
        page.mouse.down()
        for step in range(1, 25):
            page.mouse.move(drag["x"] + drag["width"] * 0.6 + 4 * step, drag["y"] + drag["height"] * 0.6 + step)
        page.mouse.up()
        page.click("#save")
        wait_for_status(page, "Saved correction v1")
        page.wait_for_function("document.querySelector('#numbers').innerText.includes('Mask area')")
        if width >= 1440:
            assert on_screen(box_of(page, "#status"), viewport) and on_screen(box_of(page, "#editor .mse-canvas"),
                                                                              viewport)
        name = "annotator.png" if width >= 1440 else f"annotator-{width}.png"
        page.screenshot(path=str(screenshot_dir(tmp_path) / name))
        if width >= 1440:   # below the editor: the queue, the case's history and its numbers
            page.wait_for_selector("#history :text('History of case')")
            page.evaluate("window.scrollTo(0, document.querySelector('#history').getBoundingClientRect().top "
                          "+ window.scrollY - 420)")
            page.screenshot(path=str(screenshot_dir(tmp_path) / "editor-history.png"))
    finally:
        page.context.close()


NAMELESS_PROMPTS = {1440: "One medium oval-shaped benign lesion in the breast ultrasound image.",
                    800: "A benign oval lesion in the centre of the breast ultrasound scan."}


@pytest.mark.parametrize("width", [1440, 800])
def test_editing_waits_for_a_name_and_a_refused_save_says_why_by_the_button(server, browser, tmp_path, width):
    viewport = {"width": width, "height": 900}
    page = new_page(browser, server, width=width, height=900)
    try:
        page.on("dialog", lambda dialog: dialog.accept())
        case_id = segment_example(page, NAMELESS_PROMPTS[width])
        assert "Type your name in Annotator to edit this case" in page.inner_text("#status")
        lock = page.locator("#editor .mse-lock")
        lock.wait_for(state="visible")
        assert "Type your name in Annotator to edit" in lock.inner_text()
        canvas, shown = box_of(page, "#editor .mse-canvas"), box_of(page, "#editor .mse-lock")
        assert on_screen(shown, viewport) and canvas["y"] <= shown["y"] <= canvas["y"] + 40   # on the canvas
        page.screenshot(path=str(screenshot_dir(tmp_path) / f"editor-name-lock-{width}.png"))

        # No edit is taken: the brush, the tools and the mask threshold wait for the name.
        before = page.evaluate("window.medclipsegEditor.maskRuns()")
        drag = page.locator("#editor .mse-canvas").bounding_box()
        page.mouse.move(drag["x"] + drag["width"] * 0.3, drag["y"] + drag["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(drag["x"] + drag["width"] * 0.6, drag["y"] + drag["height"] * 0.55, steps=12)
        page.mouse.up()
        page.click("#editor [data-action=fill]")
        set_range(page, "mse-threshold", 0.3)
        state = editor_state(page)
        assert (state["locked"], state["revision"], state["steps"], state["threshold"]) == (True, 0, 0, 0.5)
        assert page.evaluate("window.medclipsegEditor.maskRuns()") == before
        assert "Type your name in Annotator to edit" in page.inner_text("#editor .mse-message")

        # Save says why it refuses right under the Save button, not only somewhere else on the page.
        page.click("#save")
        wait_for_status(page, "Not saved. Type your name in the Annotator box first")
        save, line = box_of(page, "#save"), box_of(page, "#status")
        assert 0 <= line["y"] - (save["y"] + save["height"]) <= 40 and on_screen(line, viewport), (save, line)
        assert db_rows(server["db"], "SELECT count(*) FROM corrections WHERE case_id = ?", (case_id,)) == [(0,)]

        # With a name the lock goes, and the next stroke is kept as that annotator's draft.
        name = f"nell{width}"
        page.fill("#annotator textarea", name)
        lock.wait_for(state="hidden")
        page.mouse.move(drag["x"] + drag["width"] * 0.3, drag["y"] + drag["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(drag["x"] + drag["width"] * 0.6, drag["y"] + drag["height"] * 0.55, steps=12)
        page.mouse.up()
        painted = page.evaluate("window.medclipsegEditor.maskRuns()")
        assert painted != before and editor_state(page)["steps"] == 1
        wait_until(lambda: db_rows(server["db"], "SELECT count(*) FROM drafts WHERE case_id = ? AND annotator = ?",
                                   (case_id, name)) == [(1,)], what="the draft under the name")
        page.reload()
        page.wait_for_selector(f'#editor [data-case-id="{case_id}"][data-ready="true"]')
        assert page.evaluate("window.medclipsegEditor.maskRuns()") == painted
        assert page.input_value("#annotator textarea") == name and not editor_state(page)["locked"]
    finally:
        page.context.close()


def test_next_opens_another_case_and_keeps_an_edit_made_just_before(server, page):
    other_id, _ = add_case(server, soft_disk(SHAPE, (30, 40), 12, 2.0), "next-other.png")
    case_id, prediction = add_case(server, soft_disk(SHAPE, (36, 48), 14, 2.0), "next-first.png")  # ranked first
    rank_order(page)
    open_next(page, "nadia", case_id)
    model = above(prediction.probability, 0.5)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    blur(page)
    paint_row(page, 60, 10, 30)
    # N at once, in the same task as the check: the stroke is still waiting in the editor's debounce.
    pending = page.evaluate("""() => { const pending = window.medclipsegEditor.state().pending;
        document.dispatchEvent(new KeyboardEvent('keydown', {key: 'n', bubbles: true})); return pending; }""")
    assert pending is True
    wait_for_case(page, other_id)   # another case, not the one just left (it still ranks first)
    assert len(dialogs) == 1 and f"Case #{case_id}" in dialogs[0]
    expected = model | row_stroke(60, 10, 30)
    draft = wait_until(lambda: db_rows(server["db"], "SELECT mask_path FROM drafts WHERE case_id = ? AND annotator = ?",
                                       (case_id, "nadia")), what="the draft of the case left")
    assert np.array_equal(stored_mask(server, draft[0][0]), expected)
    assert server["store"].get_case(other_id).assigned_to == "nadia"

    page.keyboard.press("n")   # nothing unsaved here: the case left comes back, with its edit
    wait_for_case(page, case_id)
    assert np.array_equal(editor_mask(page), expected)
    assert page.evaluate("window.medclipsegEditor.isDirty()")
    assert "Restored your unsaved edits" in page.inner_text("#status")


def test_reload_right_after_a_stroke_keeps_it(server, page):
    case_id, prediction = add_case(server, soft_disk(SHAPE, (36, 48), 14, 2.0), "reload-at-once.png")
    rank_order(page)
    open_next(page, "rita", case_id)
    page.on("dialog", lambda dialog: dialog.accept())
    paint_row(page, 12, 20, 60)
    page.reload()   # within the debounce: the page sends the edit as it leaves
    wait_for_case(page, case_id)
    assert np.array_equal(editor_mask(page), above(prediction.probability, 0.5) | row_stroke(12, 20, 60))


def test_skip_after_a_save_asks_before_the_saved_version_leaves_export(server, page, tmp_path):
    store = server["store"]
    case_id, _ = add_case(server, soft_disk(SHAPE, (36, 48), 14, 2.0), "skip-saved.png")
    rank_order(page)
    open_next(page, "sven", case_id)
    paint_row(page, 60, 10, 30)
    page.click("#save")
    wait_for_status(page, "Saved correction v1")
    confirm = page.locator("#skip-confirm")
    assert not confirm.is_visible()
    page.click("#skip")
    status = wait_for_status(page, "Not skipped")
    assert "v1 (corrected, saved by sven)" in status and "out of export and retraining" in status
    confirm.wait_for(state="visible")
    assert store.get_case(case_id).status == "corrected"
    assert page.evaluate("window.medclipsegEditor.caseId()") == case_id   # nothing closed
    for width in (1440, 800):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(300)
        page.screenshot(path=str(screenshot_dir(tmp_path) / f"skip-confirm-{width}.png"))
    confirm.click()
    wait_for_status(page, f"Case #{case_id} skipped.")
    confirm.wait_for(state="hidden")
    assert store.get_case(case_id).status == "skipped"
    assert page.evaluate("window.medclipsegEditor.caseId()") is None


@pytest.mark.parametrize("width", [1440, 800])
def test_a_model_that_found_nothing_says_what_to_do(server, browser, tmp_path, width):
    import cv2

    viewport = {"width": width, "height": 900}
    # An MRI-like picture (the shipped brain phantom) on which the model saw nothing for the prompt.
    image = cv2.imread(str(ROOT / "assets" / "examples" / "brain_mri.png"))
    case_id, _ = ranked_case(server["store"], np.full(image.shape[:2], 0.03, np.float32), rank=next(RANKS),
                             name=f"brain-{width}.png", prompt="the left putamen", image=image)
    page = new_page(browser, server, width=width, height=900)
    try:
        page.fill("#annotator textarea", f"quinn{width}")
        page.click("#next-case")
        wait_for_case(page, case_id)
        hint = page.locator("#editor .mse-hint")
        hint.wait_for(state="visible")
        text = hint.inner_text()
        assert "The model found nothing for this prompt" in text and "highest probability is 0.03" in text
        assert "brush (B)" in text and "Model tab" in text and "lower the mask threshold" not in text
        canvas, shown = box_of(page, "#editor .mse-canvas"), box_of(page, "#editor .mse-hint")
        assert on_screen(shown, viewport) and canvas["y"] <= shown["y"] <= canvas["y"] + canvas["height"] / 2
        assert "The model found nothing for “the left putamen”" in page.inner_text("#status")
        page.screenshot(path=str(screenshot_dir(tmp_path) / f"editor-nothing-found-{width}.png"))
        page.locator("#editor .mse-canvas").scroll_into_view_if_needed()
        paint_row(page, 150, 100, 130)   # drawing it: the hint has said its piece
        hint.wait_for(state="hidden")
        page.click("#editor [data-action=undo]")
        hint.wait_for(state="visible")
    finally:
        page.context.close()
        # The other width's case shows the same picture: a lease held here would make the queue's
        # diverse order serve something else first.
        server["store"].release(case_id, annotator=f"quinn{width}")
