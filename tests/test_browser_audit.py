"""The audit in a real browser: attach two prediction files on the Data page and reach Compare with both models and
a paired verdict (Chromium from apt, driven by Playwright; helpers and fixtures from ``test_browser``).

The files score the app's default synthetic dataset: ``shared`` is right on a fixed random 70% of the test pairs,
``personal`` is the same except that it is right on every pair of the minority users (found with the library's own
support estimator and grouping), so its verdict against ``shared`` must be a clear minority win: ``pareto``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import wait_for
from test_browser import HANG_MS, VIEWPORT, app_server, browser, no_exceptions, shoot, wait_idle, wait_plots  # noqa: F401

from pafo.sources import DataConfig, load_dataset
from pafo.support import GroupConfig, estimate_support

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

AUDIT_TIMEOUT = 240.0  # seconds for the background audit (load, exact support, two files, bootstraps) under load


def prediction_files(folder) -> tuple:
    """shared.csv (texts + margin) and personal.parquet (pair_id + margin) for the default synthetic dataset."""
    dataset = load_dataset(DataConfig())
    groups = GroupConfig().apply(estimate_support(dataset, "auto").user_support)
    test = dataset.pair_table("test")
    minority = groups.groups.to_numpy()[dataset.split("test")["user"].to_numpy()] == "minority"
    right = np.random.default_rng(0).random(len(test)) < 0.7
    shared = np.where(right, 1.0, -1.0)
    test.drop(columns="split").assign(margin=shared).to_csv(folder / "shared.csv", index=False)
    personal = pd.DataFrame({"user_id": test["user_id"], "pair_id": test.index, "margin": np.where(minority, 1.0,
                                                                                                     shared)})
    personal.to_parquet(folder / "personal.parquet", index=False)
    return folder / "shared.csv", folder / "personal.parquet"


def test_attach_two_prediction_files_and_reach_compare_with_a_verdict(app_server, browser, tmp_path):  # noqa: F811
    url = app_server[0]
    files = prediction_files(tmp_path)
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(HANG_MS)
    page.goto(url)
    page.get_by_text("Audit your own reward model").wait_for()
    wait_idle(page)
    uploader = page.locator("[data-testid='stFileUploader']").filter(has_text="Prediction files")
    uploader.locator("input[type='file']").set_input_files([str(f) for f in files])
    page.get_by_text("personal (personal.parquet)").wait_for()
    wait_idle(page)
    no_exceptions(page)
    shoot(page, "10_audit_attach")

    page.get_by_role("button", name="Start audit").click()
    page.wait_for_url("**/compare?run=*")
    def audit_shown() -> bool:
        failed = page.locator("[data-testid='stAlertContentError']")
        assert failed.count() == 0, failed.first.inner_text()
        return page.get_by_text("Paired comparisons").count() > 0

    wait_for(audit_shown, AUDIT_TIMEOUT, interval=0.5)
    wait_idle(page)
    no_exceptions(page)
    main = page.locator("[data-testid='stMain']")
    assert main.get_by_text("Verdict vs shared:").count() == 1
    assert main.get_by_text("Verdict vs shared: ✓ Pareto improvement").count() == 1  # the verdict, in words
    for name in ("shared", "personal"):
        assert main.get_by_text(name, exact=True).count() >= 1  # both models' headline cards
    assert wait_plots(page, 3) >= 3  # group bars, bias curve, per-user scatter (personal vs shared)
    shoot(page, "11_audit_compare")

    page.get_by_role("link", name="Users").first.click()
    page.wait_for_url("**/users*")
    wait_idle(page)
    no_exceptions(page)
    assert wait_plots(page, 1) >= 1  # each model's margins on the user's pairs
    page.close()
