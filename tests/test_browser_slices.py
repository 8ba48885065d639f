"""Slices in a real browser: attach a user-attributes file beside the default synthetic data on the Data page, audit
two prediction files, and see on Compare the accuracy per slice with CI whiskers, the slice × method heat map and
the table (worst first, a gain that holds after Holm marked); slice by an intersection; find the slices with their
picker in the downloaded HTML report (offline); filter the Users page by an attribute.

The files score the app's default synthetic dataset: ``shared`` is right on a fixed random 70% of the test pairs,
``eu`` is the same except that it is right on every pair of the users whose region is EU, so EU is the one slice
where ``eu`` must beat ``shared`` after Holm.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from conftest import wait_for
from test_browser import (  # noqa: F401
    HANG_MS,
    VIEWPORT,
    app_server,
    browser,
    no_exceptions,
    plots_rendered,
    shoot,
    wait_idle,
    wait_plots,
)

from pafo.sources import DataConfig, load_dataset

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

AUDIT_TIMEOUT = 240.0
REGIONS = np.array(["EU", "US", "ASIA"])


def input_files(folder) -> tuple:
    """attributes.csv (region, tier for every user of the default dataset) and the two prediction files."""
    dataset = load_dataset(DataConfig())
    users = dataset.users["user_id"].to_numpy()
    region = REGIONS[np.arange(len(users)) % 3]
    pd.DataFrame({"user_id": users, "region": region, "tier": np.where(np.arange(len(users)) % 2, "pro", "free")}
                 ).to_csv(folder / "attributes.csv", index=False)
    test = dataset.pair_table("test").drop(columns="split")
    right = np.random.default_rng(0).random(len(test)) < 0.7
    shared = np.where(right, 1.0, -1.0)
    in_eu = region[dataset.split("test")["user"].to_numpy()] == "EU"
    test.assign(margin=shared).to_csv(folder / "shared.csv", index=False)
    test.assign(margin=np.where(in_eu, 1.0, shared)).to_csv(folder / "eu.csv", index=False)
    return folder / "attributes.csv", folder / "shared.csv", folder / "eu.csv"


def choose(widget, option: str) -> None:
    """Pick ``option`` in a select box or multiselect by typing it (a click does not open its list)."""
    field = widget.locator("input")
    field.click()
    field.fill(option)
    field.press("Enter")
    field.press("Escape")


def heat_labels(page) -> list[str]:
    """The slice labels (rows) of the heat map on the page."""
    return page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(p => (p.data || [])"
                         ".filter(t => t.type === 'heatmap').flatMap(t => [...t.y]))")


def main_text(page) -> str:
    return page.locator("[data-testid='stMain']").inner_text()


def test_slices_on_compare_in_the_report_and_users_filter(app_server, browser, tmp_path):  # noqa: F811
    url = app_server[0]
    attributes, shared, eu = input_files(tmp_path)
    page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
    page.set_default_timeout(HANG_MS)
    page.goto(url)
    page.get_by_text("User attributes (optional)").wait_for()
    wait_idle(page)

    # 1. The attributes file beside the (default synthetic) data, then Load dataset.
    page.get_by_text("User attributes (optional)").click()
    uploader = page.locator("[data-testid='stFileUploader']").filter(has_text="Upload a user attributes file")
    uploader.locator("input[type='file']").set_input_files(str(attributes))
    uploader.get_by_text("attributes.csv").wait_for()
    # Regression (flaky under load): the file's name shows in the browser before the server has the upload, and a
    # Load dataset pressed in between loaded the data without it; the page now says when the server has it.
    page.get_by_text("attributes.csv received").wait_for()
    wait_idle(page)
    page.get_by_role("button", name="Load dataset").click()
    page.get_by_text("region (3 values)").wait_for()
    wait_idle(page)
    no_exceptions(page)
    shoot(page, "20_slices_data_attributes")

    # 2. Audit the two files; Compare opens with the slices panel sliced by the users' own attribute.
    audit_uploader = page.locator("[data-testid='stFileUploader']").filter(has_text="Prediction files")
    audit_uploader.locator("input[type='file']").set_input_files([str(shared), str(eu)])
    page.get_by_text("eu (eu.csv)").wait_for()
    wait_idle(page)
    start = page.get_by_role("button", name="Start audit")
    wait_for(lambda: start.count() == 1, 30, interval=0.2)  # a rerun's stale copy of the form is gone
    start.click()
    page.wait_for_url("**/compare?run=*")

    def slices_shown() -> bool:
        failed = page.locator("[data-testid='stAlertContentError']")
        assert failed.count() == 0, failed.first.inner_text()
        return "Slicing region" in main_text(page)

    wait_for(slices_shown, AUDIT_TIMEOUT, interval=0.5)
    wait_idle(page)
    no_exceptions(page)
    assert wait_plots(page, 7) >= 7  # forest, group bars, bias curve, scatter, Pareto, slice accuracy, heat map
    text = main_text(page)
    assert "Slicing region" in text and "Holm" in text
    # Paired comparisons, slices, unfairness: grids are laid out after the figures under load, so wait for them.
    frames = page.locator("[data-testid='stDataFrame']")
    assert wait_for(lambda: frames.count() >= 3, HANG_MS / 1000, interval=0.3), frames.count()
    figures = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].map(p => p.data ? "
                            "p.data.map(t => [t.type, t.name || '', (t.y || []).length, t.text || null]) : [])")
    scatter = [f for f in figures if any(t[1] == "eu" and t[0] == "scatter" for t in f)]
    heat = [f for f in figures if any(t[0] == "heatmap" for t in f)]
    assert scatter and heat, figures
    cells = next(t[3] for t in heat[0] if t[0] == "heatmap")
    assert sum("*" in str(cell) for row in cells for cell in row) == 1, cells  # only EU holds after Holm
    labels = heat_labels(page)
    assert set(labels) == {"region = EU", "region = US", "region = ASIA"}
    assert "*" in str(cells[labels.index("region = EU")])
    whiskers = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].filter(p => (p.data || [])"
                             ".some(t => t.name === 'eu' && t.error_x))"
                             ".map(p => p.querySelectorAll('.errorbar').length)")
    assert whiskers == [6], whiskers  # a CI whisker per slice and model, drawn
    shoot(page, "21_slices_compare_region")

    # 3. An intersection, computed on demand.
    choose(page.locator("[data-testid='stMultiSelect']").filter(has_text="Slice by"), "tier")
    wait_for(lambda: "Slicing region,tier" in main_text(page), 120, interval=0.5)
    wait_idle(page)
    no_exceptions(page)
    wait_plots(page, 6)
    labels = wait_for(lambda: (found := heat_labels(page)) and len(found) == 6 and found, 60, interval=0.3)
    assert "region = EU · tier = free" in labels, labels
    shoot(page, "22_slices_compare_intersection")

    # 4. The report carries the slices with their picker and renders offline.
    with page.expect_download() as download_info:
        page.get_by_role("button", name="HTML report").click()
    report = tmp_path / "report.html"
    download_info.value.save_as(report)
    offline = browser.new_page(viewport=VIEWPORT)
    offline.route("http*://**", lambda route: route.abort())
    offline.goto(report.as_uri())
    offline.get_by_text("Slices", exact=True).wait_for()
    assert offline.locator("#slice-pick option").count() == 1
    offline.locator("#slicing-0").scroll_into_view_if_needed()
    wait_for(lambda: offline.evaluate("() => document.querySelectorAll('#slicing-0 .js-plotly-plot .main-svg')"
                                      ".length") >= 2, 60, interval=0.3)
    assert "region = EU · tier = free" in offline.locator("#slicing-0 table").inner_text()
    shoot(offline, "23_slices_report")
    offline.close()

    # 5. Users: filter the list by an attribute.
    page.get_by_role("link", name="Users").first.click()
    page.wait_for_url("**/users*")
    wait_idle(page)
    choose(page.locator("[data-testid='stSelectbox']").filter(has_text="Filter by attribute"), "region")
    wait_idle(page)
    values = page.locator("[data-testid='stMultiSelect']").filter(has_text="region is one of")
    choose(values, "EU")
    values.locator("[data-tag]").filter(has_text="EU").wait_for()
    user_field = page.get_by_role("combobox", name="User", exact=True)
    # The rerun with the filter shows an EU user (every third id) first.
    wait_for(lambda: (shown := re.search(r"u(\d{4})", user_field.input_value())) and int(shown[1]) % 3 == 0, 60,
             interval=0.3)
    wait_idle(page)
    no_exceptions(page)
    user_field.click()
    user_field.press("ArrowDown")
    options = page.get_by_role("option").all_inner_texts()
    user_field.press("Escape")
    assert options and all(int(o.split(" ")[0][1:]) % 3 == 0 for o in options), options[:5]  # EU = every third user
    assert plots_rendered(page) >= 1
    shoot(page, "24_slices_users_filter")
    page.close()
