"""The app in a real browser: headless Debian Chromium driven by Playwright, a live `python app.py`.

Chromium comes from Debian (`/usr/bin/chromium`, installed by `.ci/run`); Playwright's own
browser downloads are never used. Without Chromium the tests are skipped, unless
MEDCLIPSEG_REQUIRE_BROWSER=1 (set by `.ci/run`), which turns the skip into a failure.
Screenshots go to MEDCLIPSEG_SCREENSHOTS (default: the test's tmp folder).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from app_support import (
    drag_across_editor,
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    app_server,
    browser_or_skip,
    db_rows,
    files_under,
    open_tab,
    screenshot_dir,
    wait_for_status,
    write_dicom,
    write_huge_png,
    write_text_as_png,
    write_truncated_png,
)

EXAMPLE = ROOT / "assets" / "examples" / "colonoscopy.png"
EXAMPLE_PROMPT = "Endoscopic colon image showing one medium oval-shaped hyperplastic growth on the left."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    browser_or_skip()
    folder = tmp_path_factory.mktemp("browser")
    with app_server(folder / "db" / "annotations.db") as (url, _process):
        yield url, folder / "db" / "annotations.db"


@pytest.fixture()
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1500, "height": 1300})
        page = context.new_page()
        page.set_default_timeout(90_000)
        page.goto(server[0])
        page.wait_for_selector("#segment")
        yield page
        browser.close()


def numbers_text(page) -> str:
    return page.inner_text("#numbers")


def set_editor_range(page, css_class: str, value: float) -> None:
    """Move one of the editor's range inputs the way a drag does: set it, fire its input event."""
    page.locator(f"#editor .{css_class}").evaluate(
        "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }", str(value))


def test_segment_threshold_paint_and_save(server, page, tmp_path):
    url, db_path = server
    page.fill("#annotator textarea", "alice")
    page.set_input_files("#upload input[type=file]", str(EXAMPLE))
    page.wait_for_selector("#preview img")
    page.fill("#prompt textarea", EXAMPLE_PROMPT)
    page.click("#segment")
    page.wait_for_selector("#status :text('Segmented')")
    page.wait_for_selector('#editor [data-ready="true"]')
    assert "Mask threshold / samples" in numbers_text(page)
    assert "0.50 / 8" in numbers_text(page)

    # Mask threshold 0.50 -> 0.60 in the editor: the numbers follow, no new prediction row.
    set_editor_range(page, "mse-threshold", 0.6)
    page.wait_for_function("document.querySelector('#numbers').innerText.includes('0.60 / 8')")
    # Uncertainty threshold 0.35 -> 0.45 nats.
    set_editor_range(page, "mse-uncertainty", 0.45)
    page.wait_for_function("document.querySelector('#numbers').innerText.includes('0.45 nats')")
    assert db_rows(db_path, "select count(*) from predictions") == [(1,)]

    # Paint one brush stroke (the editor starts with the brush) across the middle of the picture, then save.
    drag_across_editor(page, (0.45, 0.5), (5, 1))
    page.click("#save")
    wait_for_status(page, "Saved correction v1")
    page.screenshot(path=str(screenshot_dir(tmp_path) / "annotator.png"), full_page=True)

    rows = db_rows(db_path, "select c.annotator, c.status, c.version, c.pixels_added, c.pixels_erased, "
                            "c.threshold, c.model_id, c.mask_path, k.status, k.original_name "
                            "from corrections c join cases k on k.id = c.case_id")
    assert len(rows) == 1
    annotator, status, version, added, erased, threshold, model_id, mask_path, case_status, name = rows[0]
    assert (annotator, status, version, case_status, name) == ("alice", "corrected", 1, "corrected", "colonoscopy.png")
    assert added > 50 and erased == 0
    assert threshold == pytest.approx(0.60)
    assert model_id.startswith("demo-tiny@")
    files_dir = Path(db_path).parent / "annotations_files"
    assert (files_dir / mask_path).exists()
    status_text = page.inner_text("#status")
    assert f"+{added:,}" in status_text


BAD_UPLOADS = [
    ("truncated.png", write_truncated_png, "truncated or corrupt"),
    ("notes.png", write_text_as_png, "not a recognised image"),
    ("huge.png", write_huge_png, "too large"),
    ("nopixels.dcm", lambda path: write_dicom(path, with_pixels=False), "no pixel data"),
]


def test_bad_uploads_show_messages_and_leave_db_untouched(server, page, tmp_path):
    url, db_path = server
    files_dir = Path(db_path).parent / "annotations_files"
    before_rows = db_rows(db_path, "select (select count(*) from cases), (select count(*) from predictions), "
                                   "(select count(*) from corrections)")
    before_files = files_under(files_dir)
    page.fill("#annotator textarea", "bob")
    page.fill("#prompt textarea", EXAMPLE_PROMPT)
    for name, writer, expected in BAD_UPLOADS:
        path = writer(tmp_path / name)
        page.set_input_files("#upload input[type=file]", str(path))
        page.wait_for_selector(f"#status :text('{name}')")
        message = page.inner_text("#status")
        assert expected in message, message
        # The unreadable file is cleared from the upload box; Segment then asks for an image.
        page.wait_for_selector("#upload input[type=file]", state="attached")
        page.click("#segment")
        page.wait_for_selector("#status :text('Upload an image')")
    page.screenshot(path=str(screenshot_dir(tmp_path) / "bad-upload.png"), full_page=True)

    # A good image with an empty prompt.
    page.set_input_files("#upload input[type=file]", str(EXAMPLE))
    page.wait_for_selector("#preview img")
    page.fill("#prompt textarea", "   ")
    page.click("#segment")
    page.wait_for_selector("#status :text('Prompt is empty')")

    after_rows = db_rows(db_path, "select (select count(*) from cases), (select count(*) from predictions), "
                                  "(select count(*) from corrections)")
    assert after_rows == before_rows
    assert files_under(files_dir) == before_files


def test_a_broken_nifti_file_is_refused_in_words_once(server, page, tmp_path):
    import gzip

    url, db_path = server
    volume = tmp_path / "brain_t1.nii.gz"
    volume.write_bytes(gzip.compress(b"\x5c\x01" + b"\0" * 350))   # a NIfTI-1 header's size field, then zeros
    before = db_rows(db_path, "select count(*) from cases")
    page.evaluate("""() => { window.__toasts = 0;
        new MutationObserver((changes) => { for (const change of changes) for (const node of change.addedNodes)
            if (node.nodeType === 1 && (node.matches('[data-testid=toast-body], .toast-body') ||
                node.querySelector('[data-testid=toast-body], .toast-body'))) window.__toasts++; })
            .observe(document.body, {subtree: true, childList: true}); }""")
    page.set_input_files("#upload input[type=file]", str(volume))
    # Volumes are read (tests/test_app_volume_browser.py); a file that is no NIfTI is refused by name.
    expected = "brain_t1.nii.gz: the file is not a NIfTI-1 or NIfTI-2 image"
    page.wait_for_selector("#status :text('brain_t1.nii.gz')")
    assert expected in page.inner_text("#status")
    page.wait_for_timeout(1500)   # a toast or a second message would have come by now
    assert page.evaluate("window.__toasts") == 0
    assert "Invalid file type" not in page.inner_text("body")
    # The box is empty again, without an error badge; the message is said once.
    page.wait_for_selector("#upload input[type=file]", state="attached")
    assert page.locator("#upload [data-testid=status-tracker].error, #upload .error").count() == 0
    assert page.inner_text("body").count("is not a NIfTI-1 or NIfTI-2 image") == 1
    assert db_rows(db_path, "select count(*) from cases") == before
    for width in (1440, 800):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(300)
        page.screenshot(path=str(screenshot_dir(tmp_path) / f"upload-broken-nifti-{width}.png"))


def test_dicom_window_presets_change_the_picture(server, page, tmp_path):
    from app_support import write_dicom

    path = write_dicom(tmp_path / "slice.dcm", size=96)
    page.set_input_files("#upload input[type=file]", str(path))
    page.wait_for_selector("#status :text('Loaded')")
    assert "window applied" in page.inner_text("body")
    before = page.get_attribute("#preview img", "src")
    page.get_by_label("CT window preset").click()
    page.get_by_role("option", name="Lung").click()
    page.wait_for_function(f"document.querySelector('#preview img').src !== {before!r}")
    center = page.get_by_label("Window center").input_value()
    width = page.get_by_label("Window width").input_value()
    assert (float(center), float(width)) == (-600.0, 1500.0)


def test_review_queue_serves_the_most_uncertain_case(server, page):
    from app_support import fill_queue
    from app_support import RANK_ORDER
    from medclipseg.annotation.queue import ACQUISITIONS
    from medclipseg.annotation.store import AnnotationStore

    url, db_path = server
    store = AnnotationStore(db_path)
    fill_queue(store, 3, seed=100)
    # Every unreviewed case of the shared server counts, ranked as written independently here.
    rows = db_rows(db_path, "select c.id, p.scores from cases c join predictions p on p.id = "
                            "(select max(id) from predictions where case_id = c.id) where c.status = 'unreviewed'")
    ranked = [case_id for case_id, _ in sorted(
        rows, key=lambda row: (-json.loads(row[1])[ACQUISITIONS[RANK_ORDER].score_key], row[0]))]
    page.fill("#annotator textarea", "grace")
    open_tab(page, "Queue")
    page.click("#next-case")
    page.wait_for_selector(f"#status :text('Case #{ranked[0]}')")
    assert store.get_case(ranked[0]).assigned_to == "grace"
    page.click("#accept")
    page.wait_for_selector("#status :text('accepted as predicted')")
    assert store.get_case(ranked[0]).status == "accepted"
    page.click("#next-case")
    page.wait_for_selector(f"#status :text('Case #{ranked[1]}')")
    page.click("#skip")
    page.wait_for_selector(f"#status :text('Case #{ranked[1]} skipped')")
    assert store.get_case(ranked[1]).status == "skipped"
    assert db_rows(db_path, f"select count(*) from corrections where case_id = {ranked[1]}") == [(0,)]


def test_ingest_then_export_from_the_browser(server, page, tmp_path):
    import zipfile

    url, db_path = server
    open_tab(page, "Ingest")
    examples = [ROOT / "assets" / "examples" / name for name in ("dermoscopy.png", "chest_xray.png")]
    page.locator("#ingest-files input[type=file]").set_input_files([str(path) for path in examples])
    page.get_by_label("One prompt for every image").fill("A lesion in the image.")
    # The progress bar counts the images while the ingest runs (each count is recorded as it shows).
    page.evaluate("""() => {
        window.__ingestSeen = [];
        new MutationObserver(() => {
            const text = document.querySelector('#ingest-progress').innerText;
            if (text) window.__ingestSeen.push(text);
        }).observe(document.querySelector('#ingest-progress'), {subtree: true, childList: true, characterData: true});
    }""")
    page.click("#ingest")
    page.wait_for_selector("#ingest-report :text('2 images added')")
    seen = " | ".join(page.evaluate("window.__ingestSeen"))
    assert "1 / 2 images" in seen and seen.endswith("Done"), seen
    waiting = db_rows(db_path, "select count(*) from cases where status = 'unreviewed'")[0][0]
    page.wait_for_function(f"document.querySelector('#queue').innerText.includes('{waiting} unreviewed')")
    names = [row[0] for row in db_rows(db_path, "select original_name from cases where source = 'ingest'")]
    assert {"chest_xray.png", "dermoscopy.png"} <= set(names)

    # Accept one case from the queue, so that the export has something to hold.
    page.fill("#annotator textarea", "heidi")
    open_tab(page, "Queue")
    page.click("#next-case")
    page.wait_for_selector("#status :text('Case #')")
    page.click("#accept")
    page.wait_for_selector("#status :text('accepted as predicted')")

    open_tab(page, "Export")
    # A case with several raters is labelled by their STAPLE consensus unless the admin picks a majority vote.
    assert "STAPLE consensus" in page.locator("#export-consensus input").input_value()
    page.click("#export")
    page.wait_for_selector("#export-report :text('Exported')")
    shots = screenshot_dir(tmp_path)
    page.screenshot(path=str(shots / "export-1440.png"))
    page.set_viewport_size({"width": 800, "height": 900})
    page.screenshot(path=str(shots / "export-800.png"), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 900})
    link = page.locator("#export-file a").first
    with page.expect_download() as download:
        link.click()
    archive = tmp_path / "export.zip"
    download.value.save_as(archive)
    with zipfile.ZipFile(archive) as opened:
        names = opened.namelist()
    assert any(name.endswith("manifest.json") for name in names)
    assert any("/Train_Folder/label/" in name for name in names)


def test_clicking_an_example_loads_image_and_prompt(server, page):
    page.locator("#examples button.thumbnail-item").nth(1).click()   # brain MRI, the second example
    page.wait_for_selector("#status :text('brain_mri.png')")
    assert "meningioma" in page.locator("#prompt textarea").input_value()
    page.wait_for_selector("#preview img")
