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

    from medclipseg.annotation.queue import ACQUISITION_SCORES, ACQUISITIONS, DEFAULT_ACQUISITION

    rank_column = ACQUISITION_SCORES[DEFAULT_ACQUISITION]
    score_key = ACQUISITIONS[DEFAULT_ACQUISITION].score_key
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
