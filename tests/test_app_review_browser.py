"""The review step in the browser, with logins: an annotator sees no review controls and no
admin tabs; a reviewer opens the submitted case from the Review tab, cannot reject it without a
comment, rejects it with one, and the history says who reviewed what."""
from __future__ import annotations

import numpy as np
import pytest

from app_support import (
    app_server,
    browser_or_skip,
    chromium_browser,
    demo_database,
    fill_queue,
    open_tab,
    screenshot_dir,
    wait_for_status,
)

AUTH = "ann:pw-ann,rev:pw-rev:reviewer,boss:pw-boss:admin"


def signed_in_page(browser, url, user, password, *, width=1440, height=900):
    context = browser.new_context(viewport={"width": width, "height": height})
    response = context.request.post(f"{url}login", form={"username": user, "password": password})
    assert response.ok, response.status
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_selector("#next-case")
    page.wait_for_function("document.querySelector('#signed-in') && "
                           "document.querySelector('#signed-in').innerText.includes('Signed in as')")
    return page


def open_review_tab(page):
    """The Review tab appears once the page's load has checked the login; wait for it, then open it."""
    page.get_by_role("tab", name="Review", exact=True).wait_for(state="visible")
    open_tab(page, "Review")


def test_a_reviewer_rejects_a_submitted_case_with_a_comment(tmp_path):
    browser_or_skip()
    db_path = tmp_path / "db" / "annotations.db"
    store = demo_database(db_path)
    case_id, _other = fill_queue(store, 2)
    mask = np.zeros((48, 64), bool)
    mask[10:30, 12:44] = True
    store.save_correction(case_id, mask, annotator="ann")
    store.submit_for_review(case_id, by="ann")
    store.close()
    shots = screenshot_dir(tmp_path)
    with app_server(db_path, env={"MEDCLIPSEG_AUTH": AUTH}) as (url, _process), chromium_browser() as browser:
        annotator = signed_in_page(browser, url, "ann", "pw-ann")
        assert "Signed in as ann (annotator)" in annotator.inner_text("#signed-in")
        for hidden in ("#review-tab", "#ingest-tab", "#export-tab", "#review-actions", "#retrain-controls"):
            assert not annotator.locator(f"{hidden}:visible").count(), hidden
        assert not annotator.get_by_role("tab", name="Review", exact=True).count()
        annotator.context.close()

        admin = signed_in_page(browser, url, "boss", "pw-boss")
        for _ in range(2):  # an admin keeps the admin tabs across screens
            open_review_tab(admin)
            open_tab(admin, "Annotate")
            for name in ("Ingest", "Export"):
                assert admin.get_by_role("tab", name=name, exact=True).count(), name
        admin.context.close()

        reviewer = signed_in_page(browser, url, "rev", "pw-rev")
        open_review_tab(reviewer)
        reviewer.wait_for_function("document.querySelector('#review-queue').innerText.includes('Waiting for review')")
        assert f"#{case_id}" in reviewer.inner_text("#review-queue")
        reviewer.screenshot(path=str(shots / "review-1440.png"))
        open_tab(reviewer, "Annotate")
        for hidden in ("#ingest-tab", "#export-tab"):  # a reviewer is no admin
            assert not reviewer.get_by_role("tab", name=hidden[1:-4].title(), exact=True).count(), hidden
        reviewer.click("#review-next")
        status = wait_for_status(reviewer, f"Reviewing case #{case_id}")
        assert "v1" in status
        reviewer.click("#reject")
        wait_for_status(reviewer, "Say why in a comment")
        reviewer.locator("#review-comment textarea").fill("the lower edge is missed")
        reviewer.click("#reject")
        wait_for_status(reviewer, f"Case #{case_id}: rejected v1.")
        reviewer.wait_for_function("document.querySelector('#history').innerText.includes('the lower edge is missed')")
        history = reviewer.inner_text("#history")
        assert "rejected" in history and "rev" in history and "submitted" in history
        assert not reviewer.get_by_role("tab", name="Ingest", exact=True).count()
        reviewer.screenshot(path=str(shots / "review-decided-1440.png"))
        reviewer.set_viewport_size({"width": 800, "height": 900})
        reviewer.screenshot(path=str(shots / "review-decided-800.png"), full_page=True)
        reviewer.context.close()
