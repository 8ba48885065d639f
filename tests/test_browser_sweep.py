"""The What-if page's sweep mode in a real browser: from a finished tiny run, launch a 2 × 2 sweep (two minority
quantiles × two seeds, TF-IDF) and wait for its Pareto plot (Chromium from apt, driven by Playwright; the server,
browser and helpers come from ``test_browser``).

The parent is trained through the registry as ``test_browser`` does for its second dataset (40 simulated users,
tfidf, 3 epochs), so the page opens on it at once. The test waits on what the page shows (the plots drawn, the
registry's statuses), never on how fast the cells train.
"""

from __future__ import annotations

import re

import pytest
from conftest import wait_for
from test_browser import (  # noqa: F401
    HANG_MS,
    VIEWPORT,
    app_server,
    browser,
    no_exceptions,
    other_dataset_run,
    shoot,
    wait_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

SWEEP_TIMEOUT = 480.0  # seconds for four tiny cells on a shared 2-core machine; only a hang reaches it
FRESH = "[data-testid='stElementContainer']:not([data-stale='true'])"  # not an element a rerun is replacing
PARETO_TITLE = "Sweep: pafo at each grid point"
KEY, VALUES = "groups.minority_quantile", "0.1,0.3"  # a parameter that moves both group accuracies
LINES_TITLE = f"Sweep: pafo accuracy against {KEY}"


def drawn_points(page, title: str) -> int | None:
    """Marker points Plotly drew (SVG ``.point`` paths) in the figure whose title holds ``title``; None while
    there is no such figure."""
    return page.evaluate(
        "(title) => { const plot = [...document.querySelectorAll('.js-plotly-plot')].find(p => p._fullLayout && "
        "p._fullLayout.title && String(p._fullLayout.title.text).includes(title)); "
        "return plot ? plot.querySelectorAll('.scatterlayer .trace .points .point').length : null; }",
        title)


def figure_traces(page, title: str) -> list[dict]:
    """Name, mode and point count of each trace of the figure whose title holds ``title`` (from Plotly's
    computed data: Streamlit sends the arrays base64-encoded, so ``plot.data`` holds no plain lists)."""
    return page.evaluate(
        "(title) => { const plot = [...document.querySelectorAll('.js-plotly-plot')].find(p => p._fullLayout && "
        "p._fullLayout.title && String(p._fullLayout.title.text).includes(title)); "
        "return plot ? plot.calcdata.map(cd => ({name: cd[0].trace.name || '', mode: cd[0].trace.mode || '', "
        "n: cd.length})) : []; }",
        title)


def test_a_two_by_two_sweep_from_whatif_reaches_its_pareto_plot(app_server, browser):  # noqa: F811
    from playwright.sync_api import expect

    from pafo.registry import SUCCEEDED, RunRegistry

    url, home = app_server[0], app_server[1]
    parent = other_dataset_run(home)
    registry = RunRegistry(home)
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(HANG_MS)
    page.goto(f"{url}/whatif?run={parent}")
    page.get_by_text("Mode", exact=True).wait_for()
    wait_idle(page)
    page.locator("[data-testid='stRadio']").get_by_text("sweep", exact=True).click()
    launch = page.get_by_role("button", name="Launch sweep")
    launch.wait_for()
    wait_idle(page)
    page.get_by_role("combobox", name="Parameter", exact=True).click()
    page.get_by_role("option", name=f"minority quantile · {KEY}", exact=True).click()  # label · key
    wait_idle(page)
    for label, value in (("Values", VALUES), ("Seeds", "0-1")):
        field = page.locator(FRESH).get_by_label(label, exact=True)
        field.fill(value)
        field.press("Enter")  # commits the value; only the button launches
        wait_idle(page)
    no_exceptions(page)
    assert [r.id for r in registry.list()] == [parent], "a field's Enter started a run"
    launch.click()

    def pareto_drawn() -> bool:
        failed = page.locator("[data-testid='stAlertContentError']")
        assert failed.count() == 0, failed.first.inner_text()
        return (drawn_points(page, PARETO_TITLE) or 0) >= 2

    wait_for(pareto_drawn, SWEEP_TIMEOUT, interval=0.5)
    wait_idle(page)
    no_exceptions(page)

    # Four cells, each a registry run under the sweep, all succeeded; the page says so.
    cells = [r for r in registry.list() if r.id != parent]
    sweeps = {r.parent_id for r in cells}
    assert len(cells) == 4 and len(sweeps) == 1 and next(iter(sweeps)).startswith("sweep-"), cells
    assert [r.status for r in cells] == [SUCCEEDED] * 4, [(r.id, r.status, r.error) for r in cells]
    sweep_id = next(iter(sweeps))
    assert f"Sweep {sweep_id}: 4 of 4 cells done" in page.locator("[data-testid='stMain']").inner_text()

    # The Pareto plot: the two grid points (means over both seeds), each named by its value in the legend (★: on
    # the front), no labels written over the markers.
    assert drawn_points(page, PARETO_TITLE) == 2
    markers = [t for t in figure_traces(page, PARETO_TITLE) if "markers" in t["mode"]]
    assert sum(t["n"] for t in markers) == 2 and all(t["mode"] == "markers" for t in markers)
    assert sorted(t["name"].removesuffix(" ★") for t in markers) == ["minority_quantile=0.1", "minority_quantile=0.3"]
    assert any(t["name"].endswith("★") for t in markers)  # at least one point is undominated
    # The line plot: majority and minority accuracy at both values of the parameter.
    assert wait_for(lambda: drawn_points(page, LINES_TITLE) == 4, 60, interval=0.3)
    assert sorted((t["name"], t["n"]) for t in figure_traces(page, LINES_TITLE)) == [("majority", 2), ("minority", 2)]

    # The finished cells are grouped under their sweep in the parent-run picker, which keeps the parent selected.
    group = page.get_by_role("combobox", name="Parent run: single runs or a sweep")
    expect(group).to_have_value("single runs (1)")
    assert parent in page.get_by_role("combobox", name="Parent run", exact=True).input_value()
    shoot(page, "12_whatif_sweep")

    # Picking the sweep lists its cells (grid order, labelled by their params) as the runs to pick from.
    group.click()
    page.get_by_role("option", name=f"{sweep_id} · 4 cells", exact=True).click()
    wait_idle(page)
    first_cell = page.locator(FRESH).get_by_role("combobox", name="Parent run", exact=True)
    expect(first_cell).to_have_value(re.compile(rf"^✓ \S+ · {re.escape(KEY)}=0.1 seed 0 · "))
    no_exceptions(page)
    page.close()
