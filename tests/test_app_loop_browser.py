"""The annotation loop in a real browser (headless Debian Chromium, Playwright, a live `python app.py`):
ingest five images, correct three, retrain from the Model tab (a real worker process, one epoch),
promote the new version, and check that the queue is re-ranked by it in the background and that
the predictions, the page and the database carry its id.

Screenshots of the Model tab at 1440 x 900 and 800 px wide go to MEDCLIPSEG_SCREENSHOTS (default:
the test's tmp folder).
"""
from __future__ import annotations

import json
import re

from app_support import (
    drag_across_editor,
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    app_server,
    browser_or_skip,
    db_rows,
    demo_database,
    open_tab,
    screenshot_dir,
    wait_for_status,
)

EXAMPLES = sorted((ROOT / "assets" / "examples").glob("*.png"))
PROMPT = "A lesion in the image."


def gold_seed_for(content_hashes, fraction=0.5) -> int:
    """A gold seed that puts exactly one of these images in the gold split (the rule of annotation.gold)."""
    from medclipseg.annotation.gold import is_gold

    return next(seed for seed in range(10_000)
                if sum(is_gold(value, seed=str(seed), fraction=fraction) for value in content_hashes) == 1)


def paint_and_save(page, case_id) -> None:
    """Once the editor shows the case: one brush stroke across its picture, then Save."""
    page.wait_for_selector(f'#editor [data-case-id="{case_id}"][data-ready="true"]')
    drag_across_editor(page, (0.35, 0.45), (6, 2))
    page.click("#save")
    wait_for_status(page, "Saved correction v1")


def test_ingest_correct_retrain_promote_and_rerank(tmp_path):
    browser_or_skip()
    from playwright.sync_api import sync_playwright

    from app_support import RANK_ORDER
    from medclipseg.annotation.queue import ACQUISITION_SCORES, ACQUISITIONS

    rank_column = ACQUISITION_SCORES[RANK_ORDER]
    score_key = ACQUISITIONS[RANK_ORDER].score_key
    shots = screenshot_dir(tmp_path)
    db_path = tmp_path / "db" / "annotations.db"
    store = demo_database(db_path)
    base = store.current_model_id()

    with app_server(db_path) as (url, _process), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        page.set_default_timeout(90_000)
        page.goto(url)
        page.wait_for_selector("#segment")
        assert base in page.inner_text("#model-line")
        page.fill("#annotator textarea", "alice")

        # 1. Ingest the five example images.
        open_tab(page, "Ingest")
        page.locator("#ingest-files input[type=file]").set_input_files([str(path) for path in EXAMPLES])
        page.get_by_label("One prompt for every image").fill(PROMPT)
        page.click("#ingest")
        page.wait_for_selector(f"#ingest-report :text('{len(EXAMPLES)} images added')")

        # 2. Correct the three cases the queue serves first; the gold seed puts exactly one in the gold split.
        first = db_rows(db_path, f'SELECT id, content_hash FROM cases WHERE status = \'unreviewed\' '
                                 f'ORDER BY "{rank_column}" DESC, id ASC LIMIT 3')
        store.set_gold_fraction(0.5, seed=gold_seed_for([content_hash for _, content_hash in first]))
        open_tab(page, "Queue")
        for case_id, _ in first:
            page.click("#next-case")
            page.wait_for_selector(f"#status :text('Case #{case_id} ')")
            assert f"predicted by {base};" in page.inner_text("#status")
            paint_and_save(page, case_id)
        gold = dict(db_rows(db_path, "SELECT id, gold FROM cases WHERE status = 'corrected'"))
        assert set(gold) == {case_id for case_id, _ in first} and sorted(gold.values()) == [0, 0, 1]

        # 3. Retrain from the Model tab: one epoch, not promoted automatically.
        page.get_by_role("tab", name="Model").click()
        # The tab may first show the previous tick's numbers; wait for the third save to appear.
        page.wait_for_selector("#model-data :text('3 corrected')")
        page.wait_for_selector("#model-data :text('2 case(s) to train on')")
        data = page.inner_text("#model-data")
        assert "3 corrected" in data and "1 of them gold" in data and "no estimate until the first round" in data
        page.locator("#retrain-epochs input").fill("1")
        page.locator("#retrain-promote").get_by_label("no", exact=True).check()
        page.click("#retrain")
        page.wait_for_selector("#model-status :text('Started retraining job')")
        page.wait_for_selector("#job-bar[data-status=running]")
        page.click("#retrain")  # a second start is refused in words while the first runs
        page.wait_for_selector("#model-status :text('already running')")
        page.wait_for_function("document.querySelector('#job-log textarea').value.includes('epoch')",
                               timeout=150_000)
        page.screenshot(path=str(shots / "model-tab-running-1440.png"), full_page=True)
        page.wait_for_selector("#job-bar[data-status=succeeded]", timeout=240_000)
        [(version_id, job_status)] = db_rows(db_path, "SELECT version_id, status FROM jobs")
        assert job_status == "succeeded" and version_id and version_id != base
        page.wait_for_function("document.querySelector('#job-log textarea').value.includes('not promoted')")
        assert base in page.inner_text("#model-line")  # not promoted yet: the base still serves

        # 4. Promote it by hand.
        page.get_by_label("Version to promote").click()
        page.get_by_role("option", name=re.compile(re.escape(version_id))).click()
        page.click("#promote")
        page.wait_for_selector("#model-status :text('Promoted')")
        assert f"now serving {version_id}" in page.inner_text("#model-status")
        page.wait_for_function(f"document.querySelector('#model-line').innerText.includes({version_id!r})")
        assert version_id in page.inner_text("#model-current")
        # The background re-scoring ranks the two unreviewed cases by the new version.
        page.wait_for_function(
            f"document.querySelector('#rescoring').innerText.includes('Every unreviewed case is ranked by') && "
            f"document.querySelector('#rescoring').innerText.includes({version_id!r})", timeout=120_000)
        page.screenshot(path=str(shots / "model-tab-1440.png"), full_page=True)
        narrow = browser.new_context(viewport={"width": 800, "height": 900}).new_page()
        narrow.goto(url)
        narrow.get_by_role("tab", name="Model").click()
        narrow.wait_for_function("document.querySelector('#job-log textarea').value.includes('promoted=no')")
        narrow.screenshot(path=str(shots / "model-tab-800.png"), full_page=True)
        narrow.close()

        unreviewed = db_rows(db_path, "SELECT c.id, c.ranked_model_id, p.model_id, p.scores FROM cases c "
                                      "JOIN predictions p ON p.id = (SELECT max(id) FROM predictions WHERE case_id = c.id) "
                                      "WHERE c.status = 'unreviewed'")
        assert len(unreviewed) == len(EXAMPLES) - 3
        assert all(ranked == made_by == version_id for _, ranked, made_by, _ in unreviewed), unreviewed
        reviewed_models = db_rows(db_path, "SELECT DISTINCT p.model_id FROM predictions p JOIN cases c "
                                           "ON c.id = p.case_id WHERE c.status = 'corrected'")
        assert reviewed_models == [(base,)]  # reviewed cases are not re-scored
        # The queue's top is the new version's most uncertain case, ranked here from its stored scores.
        expected = min(unreviewed, key=lambda row: (-json.loads(row[3])[score_key], row[0]))[0]

        # 5. The Annotate screen serves it and says which version predicted it.
        page.get_by_role("tab", name="Annotate").click()
        open_tab(page, "Queue")
        page.click("#next-case")
        page.wait_for_selector(f"#status :text('Case #{expected} ')")
        assert f"predicted by {version_id};" in page.inner_text("#status")
        assert version_id in page.inner_text("#numbers")
        browser.close()


STILL_WATCHER = """() => { window.__busy = [];
    const seen = () => { for (const el of document.querySelectorAll(
            '#model-tab [data-testid=status-tracker], #model-line [data-testid=status-tracker], #model-tab .pending')) {
        const shown = el.matches('.pending') || !el.classList.contains('hide');
        if (shown && el.offsetParent !== null) window.__busy.push(el.className); } };
    window.__still = setInterval(seen, 25); }"""


def test_model_tab_says_what_a_retraining_does_and_stays_still_while_polling(tmp_path):
    """The preparing phase in words (no 0 % with an unknown ETA), the polling without Gradio's
    progress overlay, "auto" without gold cases announced, and the job's text after a promotion by hand."""
    browser_or_skip()
    import os
    import shutil

    import numpy as np
    from playwright.sync_api import sync_playwright

    from app_support import fill_queue
    from medclipseg.registry import demo_weights_dir, load_model

    shots = screenshot_dir(tmp_path)
    db_path = tmp_path / "db" / "annotations.db"
    store = demo_database(db_path)
    base = store.current_model_id()
    store.set_gold_fraction(0.0)
    for case_id in fill_queue(store, 2, model_id=base):
        mask = np.zeros((48, 64), bool)
        mask[10:30, 12:40] = True
        store.save_correction(case_id, mask, annotator="alice", status="corrected", threshold=0.5)
    # A version as a retraining records it (a copy of the demo weights), and its job, still preparing.
    folder = store.models_dir / "copy"
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(demo_weights_dir(), folder)
    version = store.add_trained_version(folder, model_id=load_model(str(folder), device="cpu").model_id,
                                        name="tiny", parent_id=base, created_by="alice", recipe={"epochs": 1},
                                        correction_ids=[], train_cases=2, seconds=20.0)
    job_id = store.start_job("retrain", by="alice", params={"train_cases": 2, "gold_cases": 0}, parent_id=base,
                             pid=os.getpid())
    store.update_job(job_id, message="preparing: starting the worker process (loading PyTorch)")

    with app_server(db_path) as (url, _process), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("#segment")
        page.fill("#annotator textarea", "alice")
        page.get_by_role("tab", name="Model").click()

        # Before a start: "auto" has no gold case to compare on, and the tab says so.
        page.wait_for_selector("#model-data :text('No gold cases yet')")
        assert "promote auto has nothing to compare on, so it will not promote the new version" in \
            page.inner_text("#model-data")

        # Preparing: what the worker does, a moving bar, no percentage and no "ETA unknown".
        bar = page.locator("#job-bar[data-phase=preparing]")
        bar.wait_for()
        text = bar.inner_text()
        assert f"Job {job_id} · preparing" in text and "starting the worker process (loading PyTorch)" in text
        assert "0 %" not in text and "ETA" not in text
        assert page.locator("#job-bar .mcs-job-moving").count() == 1
        # Polling while the worker reports: the tab follows, without Gradio's "processing" overlay.
        page.evaluate(STILL_WATCHER)
        for step in ("reading the reviewed cases", f"loading the model {base} and 2 case(s) to train on"):
            store.update_job(job_id, message=f"preparing: {step}")
            page.wait_for_selector(f"#job-bar :text('{step}')", timeout=15_000)
            page.wait_for_timeout(1600)   # one more tick with nothing new
        for width in (1440, 800):
            page.set_viewport_size({"width": width, "height": 900})
            page.wait_for_timeout(400)
            page.screenshot(path=str(shots / f"model-tab-preparing-{width}.png"))
        page.set_viewport_size({"width": 1440, "height": 900})
        store.update_job(job_id, progress=0.2, message="epoch 1/1, step 1/5, loss 0.5000", eta_seconds=30.0)
        page.wait_for_selector("#job-bar[data-phase=running]", timeout=15_000)
        assert "20 %" in page.inner_text("#job-bar") and "ETA" in page.inner_text("#job-bar")
        page.wait_for_timeout(1600)
        assert page.evaluate("window.__busy") == [], "a progress overlay showed while the tab was polled"

        # The job ends unpromoted ("auto" had no gold case); a promotion by hand updates its text.
        store.finish_job(job_id, status="succeeded", version_id=version.id, message=(
            f"version {version.id} recorded; not promoted: no gold cases yet to compare it with its parent; "
            "promote it by hand"))
        page.wait_for_selector("#job-bar[data-status=succeeded] :text('promote it by hand')", timeout=15_000)
        page.get_by_label("Version to promote").click()
        page.get_by_role("option", name=re.compile("^" + re.escape(version.id))).click()
        page.click("#promote")
        page.wait_for_selector("#model-status :text('Promoted')", timeout=120_000)
        page.wait_for_selector("#job-bar :text('promoted by hand by alice')", timeout=15_000)
        assert "promote it by hand" not in page.inner_text("#job-bar")
        browser.close()
