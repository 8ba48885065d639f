"""Unseen users in a real browser: a finished run that held users out shows, on Compare, the "unseen users"
panel: both learning curves drawn by Plotly (a line per method over the run's shots, with CI whiskers) and the
table of paired differences per k."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import wait_for
from test_browser import (  # noqa: F401
    HANG_MS,
    VIEWPORT,
    app_server,
    browser,
    no_exceptions,
    shoot,
    wait_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

CURVES = ("New minority users", "New majority users")


def unseen_run(home) -> str:
    """A finished tiny run (tfidf: the panel needs no new text) with 30% of users held out, shots 1, 2 and 4."""
    from pafo import appstate
    from pafo.registry import RunRegistry
    from pafo.sources import DataConfig
    from pafo.support import GroupConfig

    data = {**dataclasses.asdict(DataConfig()), "users": 60, "prompts": 30}
    config = appstate.experiment_config(
        data, dataclasses.asdict(GroupConfig()), train={"epochs": 3, "patience": 2},
        run={"encoder": "tfidf", "methods": "baseline,mixture,pafo", "bootstrap": 50, "unseen_users": 0.3,
             "shots": "1,2,4"})
    registry = RunRegistry(home)
    record = registry.wait(registry.submit_config(config, label="unseen").id, timeout=300)
    assert record.status == "succeeded", record.error
    return record.id


def curve_points(page, title: str) -> list[int] | None:
    """Points per trace of the drawn Plotly figure whose title holds ``title`` (None until it is drawn)."""
    return page.evaluate(
        "(title) => { const plot = [...document.querySelectorAll('.js-plotly-plot')].find(p => p._fullLayout && "
        "p._fullLayout.title && String(p._fullLayout.title.text).includes(title) && p.querySelector('.scatterlayer "
        ".trace')); return plot ? [...plot.querySelectorAll('.scatterlayer .trace')].map(t => "
        "t.querySelectorAll('.points path').length) : null; }", title)


def test_compare_draws_the_unseen_users_panel(app_server, browser):  # noqa: F811
    url, home = app_server[0], app_server[1]
    run_id = unseen_run(home)
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(HANG_MS)
    page.goto(f"{url}/compare?run={run_id}")
    page.get_by_text("Unseen users", exact=True).wait_for()
    wait_idle(page)
    for title in CURVES:
        assert wait_for(lambda title=title: curve_points(page, title) == [3, 3, 3], HANG_MS / 1000, interval=0.3), \
            curve_points(page, title)
    whiskers = page.evaluate(
        "() => [...document.querySelectorAll('.js-plotly-plot')].filter(p => p._fullLayout && p._fullLayout.title "
        "&& /New (minority|majority) users/.test(String(p._fullLayout.title.text)))"
        ".map(p => p.querySelectorAll('.errorbar').length)")
    assert whiskers == [9, 9]  # 3 methods × 3 shots, each point with its CI
    # The grid draws on a canvas and writes its cells into the DOM only once it has laid out, which under load
    # comes after the curves: wait for the table's header to be there before counting (CI failed on the count).
    page.get_by_text("Unseen users", exact=True).scroll_into_view_if_needed()
    table = page.locator("[data-testid='stDataFrame']").filter(has_text="pairs (k)")
    table.first.wait_for()
    assert table.count() == 1
    no_exceptions(page)
    page.get_by_text("Unseen users", exact=True).scroll_into_view_if_needed()
    shoot(page, "unseen_compare")
    page.close()
