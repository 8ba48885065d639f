"""Issue 19, item 4 in a real browser: every figure's words fit it. On Compare (a two-seed tiny run), Support and
Train, no title, subtitle, axis title, legend entry or annotation of a Plotly figure runs past the figure's own box
(the Pareto title was cut to "★ this ru", Support's x-label was cut), and none is drawn over another's words (the
scatter's count covered the 100% tick). Screenshots go to ``artifacts/screenshots/`` (``20_*``) to look at.

Chromium from apt, driven by Playwright; the server, browser and helpers come from ``test_browser``.
"""

from __future__ import annotations

import dataclasses

import pytest
from test_browser import (  # noqa: F401
    HANG_MS,
    SHOTS,
    VIEWPORT,
    app_server,
    browser,
    no_exceptions,
    shoot,
    wait_idle,
    wait_plots,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

#: Each figure's texts that leave its box, and each pair of texts that overlap, as "title: text" lines.
LAYOUT_FAULTS = """() => {
  const rect = e => e.getBoundingClientRect();
  const visible = r => r.width > 0.5 && r.height > 0.5;
  const meet = (a, b) => a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
  const faults = [];
  for (const plot of document.querySelectorAll('.js-plotly-plot')) {
    if (!plot._fullLayout) continue;
    const name = String((plot._fullLayout.title || {}).text || 'untitled');
    const box = rect(plot.querySelector('.main-svg'));
    const words = sel => [...plot.querySelectorAll(sel)].filter(e => visible(rect(e)));
    const titles = words('.gtitle, .gtitle-subtitle');
    const axes = words('.g-xtitle text, .g-ytitle text');
    const ticks = words('.xtick text, .ytick text');
    const notes = words('.annotation-text');
    const legend = words('.legendtext');
    for (const e of [...titles, ...axes, ...notes, ...legend]) {
      const r = rect(e);
      if (r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1 || r.bottom > box.bottom + 1)
        faults.push(name + ': "' + e.textContent + '" leaves the figure');
    }
    const pairs = [[notes, ticks], [notes, axes], [titles, legend], [titles, notes], [axes, ticks], [titles, titles],
                   [legend, axes], [legend, ticks]];
    for (const [group, others] of pairs)
      for (const a of group) for (const b of others)
        if (a !== b && meet(rect(a), rect(b)))
          faults.push(name + ': "' + a.textContent + '" covers "' + b.textContent + '"');
  }
  return faults;
}"""


def two_seed_run(home) -> str:
    """A finished tiny baseline + PAFO run over seeds 0-1 (40 simulated users, tfidf), trained via the registry."""
    from pafo import appstate
    from pafo.registry import RunRegistry
    from pafo.sources import DataConfig
    from pafo.support import GroupConfig

    data = {**dataclasses.asdict(DataConfig()), "users": 40, "prompts": 30, "train_pairs": 12, "test_pairs": 10}
    config = appstate.experiment_config(data, dataclasses.asdict(GroupConfig()), seeds="0-1",
                                        run={"encoder": "tfidf", "methods": "baseline,pafo", "bootstrap": 50},
                                        train={"epochs": 3, "patience": 2})
    registry = RunRegistry(home)
    record = registry.wait(registry.submit_config(config, label="two seeds").id, timeout=300)
    assert record.status == "succeeded", record.error
    return record.id


def test_figure_words_fit_their_figures(app_server, browser):  # noqa: F811
    url, home = app_server[0], app_server[1]
    run_id = two_seed_run(home)
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(HANG_MS)
    for name, plots in (("compare", 5), ("support", 2), ("train", 0)):
        page.goto(f"{url}/{name}?run={run_id}")
        page.locator("[data-testid='stMain'] h1").first.wait_for()
        wait_idle(page)
        if plots:
            assert wait_plots(page, plots) >= plots, name
            wait_idle(page)
        no_exceptions(page)
        shoot(page, f"20_{name}")
        faults = page.evaluate(LAYOUT_FAULTS)
        assert faults == [], (name, faults)
    # The same at a narrow window, where a half-width column is narrowest.
    page.set_viewport_size({"width": 1100, "height": 900})
    page.goto(f"{url}/compare?run={run_id}")
    page.locator("[data-testid='stMain'] h1").first.wait_for()
    wait_idle(page)
    assert wait_plots(page, 5) >= 5
    wait_idle(page)
    faults = page.evaluate(LAYOUT_FAULTS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "20_compare_1100px.png"), full_page=True)
    assert faults == [], ("compare at 1100 px", faults)
    page.close()
