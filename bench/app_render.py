"""App page render time from cache at scale: 2,000 users and 100,000 labelled pairs.

Run from the repository root::

    .venv/bin/python -m bench.app_render [--users 2000] [--pairs-per-user 50] [--runs 8] [--repeats 5] [--browser]

It builds a real synthetic dataset of that size (2,000 users × 50 pairs = 100,000 pairs), registers finished runs
whose artifacts (result.json, per_user.csv, test_margins.csv) have the shapes ``run_experiment`` writes — made-up
accuracies, so no hours of training — in a temporary ``$PAFO_HOME``, then renders every page with Streamlit's
AppTest: one cold run fills the caches, then ``--repeats`` timed reruns (what a user's click or a page switch costs
on the server: the script, the cached data and the serialised figures). It also times the figure builders on their
own and prints the size of each page's figures; ``--browser`` also times each page in headless Chromium (Debian's
``chromium``), from the sidebar click to the page idle with its figures drawn. Results go to
its section (``app``) of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import machine, publish
from pafo.metrics import calibration, evaluate, pair_correct, per_user_accuracy
from pafo.results import MethodResult, RunResult, mark_pareto, write_result

APP = Path(__file__).resolve().parent.parent / "app.py"
PAGES = ("data", "support", "train", "compare", "users", "whatif")
BUDGET_SECONDS = 1.0

__all__ = ["build_result", "main", "register_runs", "time_figures", "time_pages"]


def build_result(dataset, support, groups, config: dict, methods=("baseline", "pafo"), seed: int = 0,
                 n_resamples: int = 200) -> tuple[RunResult, pd.DataFrame]:
    """A result and test margins shaped like run_experiment's for a real dataset: made-up margins, every figure
    computed from them by the metric registry (:func:`pafo.metrics.evaluate`) as a run computes it."""
    rng = np.random.default_rng(seed)
    test = dataset.split("test")
    users = test["user"].to_numpy()
    s = support.user_support.to_numpy()
    group = groups.groups.to_numpy()
    margins = pd.DataFrame({"pair": test.index, "user": users, "prompt_id": test["prompt_id"].to_numpy(),
                            "chosen": test["chosen"].to_numpy(), "rejected": test["rejected"].to_numpy()})
    per_user = dataset.users[["user_id"]].assign(group=group, support_rate=s).reset_index(drop=True)
    per_user = per_user.join(dataset.user_pair_counts().reset_index(drop=True))
    history = [{"epoch": e, "loss": 0.7 - 0.05 * e, "val": {"overall": 0.7, "majority": 0.72, "minority": 0.6}}
               for e in range(1, 6)]
    out = {}
    for k, name in enumerate(methods):
        skill = 0.3 + 1.6 * s + 0.15 * k * (group == "minority")  # baseline: accuracy grows with support
        margin = rng.normal(skill[users], 1.0).astype(np.float32)
        margins[f"margin_{name}"] = margin
        accuracy = per_user_accuracy(margin, users).reindex(range(len(s)))
        per_user[f"acc_{name}"] = accuracy.to_numpy()
        table = pd.DataFrame({"user": range(len(s)), "group": group, "support_rate": s,
                              "n_pairs": np.bincount(users, minlength=len(s)), "accuracy": accuracy.to_numpy()})
        metrics = evaluate(table, n_resamples=n_resamples, seed=seed, micro_accuracy=float(pair_correct(margin).mean()))
        out[name] = MethodResult(**metrics, calibration=calibration(margin, group[users]), train_seconds=1.0,
                                 best_epoch=3, history=history)
    mark_pareto(out, epsilon=0.005)
    result = RunResult(dataset.summary(), support.summary(), groups.summary(), out, config, fingerprint="bench",
                       encoder={"name": "bench", "dim": 384, "seconds": 0.0, "cache_hits": 0}, per_user=per_user,
                       seconds=1.0)
    return result, margins


def register_runs(registry, config: dict, fingerprint: str, result: RunResult, margins: pd.DataFrame,
                  n_runs: int) -> list[str]:
    """``n_runs`` finished runs with full artifacts (the Pareto view reads every one); the first is the big one."""
    from pafo.paths import atomic_write_text

    ids = []
    for i in range(n_runs):
        run_config = json.loads(json.dumps(config))
        run_config["pafo"]["beta"] = 1.0 + i  # distinct configs, as a sweep would make
        record = registry.submit(run_config, fingerprint=fingerprint, label=f"bench {i}", start=False)
        run_dir = registry.run_dir(record.id)
        run_dir.mkdir(parents=True, exist_ok=True)
        shifted = copy.deepcopy(result)
        for method in shifted.methods.values():
            method.accuracy["minority"] -= 0.004 * i
        write_result(run_dir / "result.json", shifted)
        atomic_write_text(run_dir / "per_user.csv", shifted.per_user.to_csv(index=False))
        margins.to_csv(run_dir / "test_margins.csv", index=False)
        assert registry.mark_running(record.id, os.getpid())
        for step in range(60 if i == 0 else 0):  # the Train page draws these curves for the big run
            stage = ("baseline", "teacher:majority", "teacher:minority", "student")[step // 15]
            registry.update_progress(record.id, step / 60, stage, {
                "stage": stage, "epoch": step % 15 + 1, "loss": 0.7 - 0.004 * step,
                "val": {"overall": 0.7, "majority": 0.72 + 0.001 * step, "minority": 0.55 + 0.002 * step}})
        assert registry.mark_succeeded(record.id, run_dir / "result.json")
        ids.append(record.id)
    return ids


def time_pages(run_id: str, repeats: int) -> list[dict]:
    """Per page: a new session with empty caches, the page's first render, and ``repeats`` cached reruns."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    rows = []
    for name in PAGES:
        st.cache_data.clear()
        at = AppTest.from_file(str(APP), default_timeout=600)
        at.query_params["run"] = run_id
        start = time.perf_counter()
        at.run()  # a new session: lands on Data and loads the run's dataset for the sidebar
        session = time.perf_counter() - start
        at.switch_page(f"pages/{name}.py")
        start = time.perf_counter()
        at.run()
        first = time.perf_counter() - start
        if at.exception:
            raise RuntimeError(f"page {name}: {at.exception[0].value}")
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            at.run()
            samples.append(time.perf_counter() - start)
        charts = at.get("plotly_chart")
        figure_bytes = sum(len(c.proto.spec) for c in charts)
        rows.append({"page": name, "session_s": session, "first_s": first, "median_s": statistics.median(samples),
                     "max_s": max(samples), "figures": len(charts), "figure_kb": figure_bytes / 1024,
                     "errors": [e.value for e in at.error]})
    return rows


def time_figures(result: dict, points: pd.DataFrame, repeats: int) -> list[dict]:
    """Build time of each Compare figure on its own (the bulk of a page's work) and whether WebGL is used."""
    import plotly.graph_objects as go

    from pafo import html_report, report

    per_user = report.per_user_frame(result)
    builders = {
        "group bars (CI)": lambda: report.group_accuracy_bars(result),
        "decile curve": lambda: report.decile_curve(result),
        "per-user scatter": lambda: report.user_scatter(per_user, "baseline", "pafo"),
        "Pareto view": lambda: report.pareto_plot(points, points["run_id"].iloc[0]),
        "support histogram": lambda: report.support_histogram(per_user, 0.5),
        "unfairness table": lambda: report.unfairness_table(result),
        "HTML report (download)": lambda: html_report.build_report_html(result, run_id="bench", pareto_points=points),
    }
    rows = []
    for name, build in builders.items():
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            value = build()
            samples.append(time.perf_counter() - start)
        webgl = isinstance(value, go.Figure) and any(isinstance(t, go.Scattergl) for t in value.data)
        rows.append({"figure": name, "median_ms": 1000 * statistics.median(samples), "webgl": webgl})
    return rows


def time_browser(home: Path, run_id: str, repeats: int) -> list[dict]:
    """In Chromium: seconds from clicking a page's link in the sidebar to the page idle with its figures drawn.

    The server runs on the same home; each page is opened once to fill the caches, then timed ``repeats`` times.
    """
    import shutil
    import socket
    import subprocess
    import urllib.request

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
                               "--server.headless", "true"], cwd=APP.parent, env={**os.environ, "PAFO_HOME": str(home)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    titles = {"data": "Data", "support": "Support rates", "train": "Train", "compare": "Compare", "users": "Users",
              "whatif": "What-if"}
    headings = {"data": "PAFO Studio", "support": "Preference support rates", "train": "Train",
                "compare": "Compare methods", "users": "User drill-down", "whatif": "What-if"}
    expected = {"data": 2, "support": 2, "train": 1, "compare": 4, "users": 1, "whatif": 0}
    idle = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
    rows = []
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=args)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"http://localhost:{port}/?run={run_id}")
            page.wait_for_function(idle, timeout=300_000)

            def heading(key: str):
                return page.get_by_role("heading", name=headings[key]).first

            drawn = ("n => [...document.querySelectorAll('.js-plotly-plot')].filter(p => "
                     "p.querySelector('.main-svg')).length >= n")
            for name in PAGES:
                samples = []
                for attempt in range(repeats + 1):
                    other = "whatif" if name != "whatif" else "train"
                    page.get_by_role("link", name=titles[other]).first.click()
                    heading(other).wait_for(timeout=300_000)
                    heading(name).wait_for(state="detached", timeout=300_000)
                    page.wait_for_function(idle, timeout=300_000)
                    start = time.perf_counter()
                    page.get_by_role("link", name=titles[name]).first.click()
                    heading(name).wait_for(timeout=300_000)
                    heading(other).wait_for(state="detached", timeout=300_000)
                    page.wait_for_function(idle, timeout=300_000)
                    page.wait_for_function(drawn, arg=expected[name], timeout=300_000)
                    if attempt:  # the first visit fills the caches
                        samples.append(time.perf_counter() - start)
                rows.append({"page": name, "median_s": statistics.median(samples), "max_s": max(samples)})
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


def write_results(args, setup: dict, pages: list[dict], figures: list[dict], load: tuple[float, float],
                  browser: list[dict] | None = None) -> str:
    import plotly
    import streamlit

    lines = [
        "## App page render time (`bench/app_render.py`)", "",
        f"- Machine: {machine()}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Command: `{' '.join(['python -m bench.app_render', *sys.argv[1:]])}`",
        f"- Python {platform.python_version()}, Streamlit {streamlit.__version__}, Plotly {plotly.__version__}",
        f"- Load average (1 min) at start / end: {load[0]:.1f} / {load[1]:.1f} — other work on the machine "
        "inflates the times",
        f"- Data: synthetic, {setup['users']:,} users, {setup['pairs']:,} labelled pairs ({setup['test_pairs']:,} "
        f"test pairs in test_margins.csv), {setup['runs']} finished runs in the registry (all on the Pareto view)",
        f"- Setup (not timed below): dataset {setup['load_s']:.1f} s, support rates {setup['support_s']:.1f} s, "
        f"artifacts {setup['write_s']:.1f} s",
        "",
        f"### Server-side render time per page (AppTest; cached = median of {args.repeats} reruns)",
        "",
        "| page | new session s | first render s | cached median s | cached max s | figures | figure JSON KB "
        "| cached under 1 s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for row in pages:
        ok = "yes" if row["median_s"] < BUDGET_SECONDS else "**no**"
        lines.append(f"| {row['page']} | {row['session_s']:.2f} | {row['first_s']:.2f} | {row['median_s']:.3f} | "
                     f"{row['max_s']:.3f} | {row['figures']} | {row['figure_kb']:.0f} | {ok} |")
    if browser:
        lines += ["", f"### In the browser (Chromium, headless): sidebar click → page idle with its figures drawn, "
                  f"cached (median of {args.repeats})", "", "| page | median s | max s | under 1 s |",
                  "| --- | ---: | ---: | :---: |"]
        for row in browser:
            ok = "yes" if row["median_s"] < BUDGET_SECONDS else "**no**"
            lines.append(f"| {row['page']} | {row['median_s']:.2f} | {row['max_s']:.2f} | {ok} |")
        lines += ["", "The browser runs on the same 2 cores as the server, headless with `--disable-gpu`, so WebGL "
                  "is software-rendered (SwiftShader): a pessimistic client. The time includes the page switch "
                  "round trip, the script run and React/Plotly drawing every element."]
    lines += ["", "### Figure builders on their own (Compare page inputs, median of "
              f"{args.repeats})", "", "| figure | median ms | WebGL |", "| --- | ---: | :---: |"]
    for row in figures:
        lines.append(f"| {row['figure']} | {row['median_ms']:.1f} | {'yes' if row['webgl'] else ''} |")
    lines += ["", "New session = the first script run of a new browser session with every `st.cache_data` cache "
              "empty (it lands on Data and loads the 100,000-pair dataset for the sidebar); first render = then "
              "switching to the page (its own caches — support rates, results, test margins — still empty); "
              "cached = reruns after that (a click or a page switch). The per-user scatter switches to "
              "`Scattergl` (WebGL) from 1,000 users; the pair-level support histogram is binned on the server, "
              "so 50,000 training pairs send 40 bars. The HTML report is built only when its download button is "
              "pressed.", ""]
    text = "\n".join(lines)
    publish("app", text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--pairs-per-user", type=int, default=50, help="train (incl. val) + test pairs per user")
    parser.add_argument("--runs", type=int, default=8, help="finished runs in the registry (Pareto view)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--browser", action="store_true", help="also time the pages in headless Chromium")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    home = Path(tempfile.mkdtemp(prefix="pafo_bench_app_"))
    os.environ["PAFO_HOME"] = str(home)

    from pafo import appstate
    from pafo.registry import RunRegistry
    from pafo.sources import DataConfig, load_dataset
    from pafo.support import GroupConfig, estimate_support

    half = args.pairs_per_user // 2
    data = dataclasses.asdict(DataConfig(users=args.users, train_pairs=args.pairs_per_user - half, test_pairs=half))
    config = appstate.experiment_config(data, dataclasses.asdict(GroupConfig()), run={"encoder": "tfidf"})
    start = time.perf_counter()
    dataset = load_dataset(config.data)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    support = estimate_support(dataset, "auto")
    groups = config.groups.apply(support.user_support)
    support_s = time.perf_counter() - start
    start = time.perf_counter()
    result, margins = build_result(dataset, support, groups, config.to_dict())
    registry = RunRegistry(home)
    ids = register_runs(registry, config.to_dict(), config.fingerprint(), result, margins, args.runs)
    write_s = time.perf_counter() - start
    setup = {"users": dataset.n_users, "pairs": len(dataset.pairs), "test_pairs": len(margins), "runs": args.runs,
             "load_s": load_s, "support_s": support_s, "write_s": write_s}
    print(f"dataset: {setup['users']:,} users, {setup['pairs']:,} pairs; home {home}", flush=True)

    pages = time_pages(ids[0], args.repeats)
    results = [RunResult.from_json(registry.load_result(i).result) for i in ids]
    points = appstate.pareto_points([(registry.get(i, refresh=False), r) for i, r in zip(ids, results, strict=True)])
    figures = time_figures(result, points, args.repeats)
    browser = time_browser(home, ids[0], args.repeats) if args.browser else None
    text = write_results(args, setup, pages, figures, (load_start, os.getloadavg()[0]), browser)
    print(text)
    bad = [row for row in pages if row["median_s"] >= BUDGET_SECONDS or row["errors"]]
    for row in bad:
        print(f"page {row['page']}: median {row['median_s']:.2f} s, errors {row['errors']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
