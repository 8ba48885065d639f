"""The one-click demo end to end: how long a user waits from the click to the verdict on Compare, cold and warm, for
one seed and for the demo's five, next to the same experiment run without the app.

    python -m bench.demo_time [--seeds 0 0-4] [--no-browser] [--out FILE]

For each seed list it measures, each time in a fresh ``$PAFO_HOME`` (cold: no embeddings cached; warm: a home holding
only the embeddings cache a cold run left, so every text is read from disk and every model trains anew):

- ``pafo experiment`` (the CLI, one process, as a user would type it), cold and warm;
- ``pafo runs start`` + ``pafo runs wait`` (the background worker the app uses, without the app), cold and warm;
- the browser: ``streamlit run app.py`` with the demo on those seeds, Debian's Chromium (headless, on the same
  cores) opens the Data page, presses **Run the demo**, and a second tab follows the run on Train while the first
  follows it on Compare; the time from the click to the verdict ("… over N seeds …") on Compare, cold and warm, and
  a second click once the run exists (the registry answers it with the finished run);
- the worker's own time (registry ``started_at`` → ``finished_at``) in the browser and alone, and the CPU the app's
  server process (and Chromium) used per second while the run was followed in two tabs.

Every command is checked to run exactly the demo's experiment (same config hash as ``pafo.appstate.demo_config``).
Figures go to section ``demo`` of bench/RESULTS.md. The machine's load average is printed with them: on a shared
machine the times carry that load.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from bench.common import machine, publish

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1440, "height": 900}
TIMEOUT = 600.0  # seconds to wait for one demo before calling it failed
TICK = os.sysconf("SC_CLK_TCK")
VERDICT = re.compile(r"over (\d+) seeds? ×")
HOWS = ("cli", "runs", "browser")
RUNS, BROWSER, BROWSER_AGAIN = "pafo runs start + wait", "browser: Run the demo", "browser: Run the demo again"
CACHES = ("cold", "warm")
CLI = [sys.executable, "-c", "import sys; from pafo.cli import main; sys.exit(main())"]

__all__ = ["main"]


# ------------------------------------------------------------------------------------------------ processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class CpuSampler(threading.Thread):
    """Samples the CPU seconds of the app server and of Chromium every 0.25 s, so the CPU between two moments
    (the worker's start and end) can be read afterwards. Chromium's processes are this process's descendants that
    are neither the server nor its workers; counting only living processes, a tab closed mid-run undercounts."""

    def __init__(self, server_pid: int) -> None:
        super().__init__(daemon=True)
        self.server_pid = server_pid
        self.samples: list[tuple[float, float, float]] = []  # (time.time(), server CPU-s, chromium CPU-s)
        self.chromium: dict[int, float] = {}
        self._halt = threading.Event()

    def sample(self) -> None:
        server = cpu_seconds(self.server_pid)
        excluded = {self.server_pid, *descendants(self.server_pid)}
        for pid in descendants(os.getpid()):
            if pid not in excluded:
                self.chromium[pid] = max(self.chromium.get(pid, 0.0), cpu_seconds(pid))
        self.samples.append((time.time(), server, sum(self.chromium.values())))

    def run(self) -> None:
        while not self._halt.wait(0.25):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()

    def between(self, start: float, end: float) -> tuple[float, float]:
        """Server and Chromium CPU seconds per wall second between two ``time.time()`` moments."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return float("nan"), float("nan")
        (t0, a0, b0), (t1, a1, b1) = inside[0], inside[-1]
        return (a1 - a0) / (t1 - t0), (b1 - b0) / (t1 - t0)


def env_for(home: Path) -> dict[str, str]:
    paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PAFO_HOME": str(home), "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def run_timed(command: list[str], home: Path) -> tuple[float, float, str]:
    """Run a command to the end: wall seconds, CPU seconds of it and its children, stdout."""
    before = os.times()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env_for(home), capture_output=True, text=True, timeout=TIMEOUT)
    wall = time.perf_counter() - started
    after = os.times()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[3:])} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, done.stdout


def warm_home(cold: Path, home: Path) -> Path:
    """A new home holding only the embeddings cache of ``cold``."""
    home.mkdir()
    shutil.copytree(cold / "embeddings", home / "embeddings")
    return home


# ------------------------------------------------------------------------------------------------ measurements


@dataclass
class Row:
    how: str
    seeds: str
    cache: str
    seconds: float  # what the user waits: the command, or click → verdict
    worker: float | None = None  # the run inside its worker (registry started_at → finished_at)
    cpu: float | None = None
    texts: int | None = None  # texts embedded (not read from the cache)
    verdict: str = ""
    load: float | None = None  # 1-minute load average when it began
    extra: dict = field(default_factory=dict)


def demo_flags(seeds: str) -> list[str]:
    from pafo import appstate

    return ["--methods", appstate.DEMO_METHODS, "--encoder", appstate.DEMO_ENCODER, "--seeds", seeds]


def check_config(config: dict, seeds: str) -> None:
    """The run is the demo's experiment (anything else would time other work)."""
    from pafo import appstate
    from pafo.registry import config_hash

    expected = appstate.demo_config(seeds=seeds).to_dict()
    if config_hash(config) != config_hash(expected):
        raise RuntimeError(f"the benchmarked run is not the demo's experiment on seeds {seeds}")


def embedded(result: dict) -> int:
    """Texts a run embedded anew: distinct texts of its seeds minus those the cache held."""
    return int(result["encoder"].get("embedded", -1))


def cli_row(seeds: str, home: Path, cache: str, scratch: Path) -> Row:
    out = scratch / f"cli_{cache}_{seeds}.json"
    wall, cpu, _ = run_timed([*CLI, "experiment", *demo_flags(seeds), "--json", str(out)], home)
    result = json.loads(out.read_text())
    check_config(result["config"], seeds)
    return Row("pafo experiment", seeds, cache, wall, cpu=cpu, texts=embedded(result),
               verdict=result["comparisons"]["pafo"]["verdict"])


class WorkerWatch(threading.Thread):
    """Follows one run through the registry every 0.2 s, as a user's eyes would: when its progress line (stage and
    whole percent) changed, and the CPU seconds of its worker process (the last value read before it exited)."""

    def __init__(self, home: Path, run_id: str) -> None:
        super().__init__(daemon=True)
        from pafo.registry import RunRegistry

        self.registry, self.run_id = RunRegistry(home), run_id
        self.changes: list[tuple[float, str]] = []  # (time.time(), line) each time the line changed
        self.cpu = 0.0

    def run(self) -> None:
        while True:
            record = self.registry.get(self.run_id, refresh=False)
            if record.pid:
                self.cpu = max(self.cpu, cpu_seconds(record.pid))
            line = f"{record.stage} · {100 * record.progress:.0f}%"
            if record.status == "running" and (not self.changes or self.changes[-1][1] != line):
                self.changes.append((time.time(), line))
            if record.done:
                self.finished_at = record.finished_at or time.time()
                return
            time.sleep(0.2)

    def longest_still(self) -> tuple[float, str]:
        """The longest time the progress line stood still while the worker ran, and the line."""
        marks = [*self.changes, (getattr(self, "finished_at", time.time()), "")]
        return max(((b[0] - a[0], a[1]) for a, b in itertools.pairwise(marks)), default=(float("nan"), ""))


def runs_row(seeds: str, home: Path, cache: str) -> Row:
    from pafo.registry import RunRegistry

    started = time.perf_counter()
    _, _, out = run_timed([*CLI, "runs", "start", *demo_flags(seeds), "--force"], home)
    watch = WorkerWatch(home, out.split()[0])
    watch.start()
    run_timed([*CLI, "runs", "wait", watch.run_id], home)
    wall = time.perf_counter() - started
    watch.join()
    record = RunRegistry(home).load_result(watch.run_id)
    check_config(record.config, seeds)
    return Row(RUNS, seeds, cache, wall, worker=record.finished_at - record.started_at,
               cpu=watch.cpu, texts=embedded(record.result), verdict=record.result["comparisons"]["pafo"]["verdict"],
               extra={"still": watch.longest_still()})


# ------------------------------------------------------------------------------------------------ the browser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def app_server(home: Path, seeds: str):
    """``streamlit run app.py`` with the demo on ``seeds`` (this module's ``serve`` command), on a free port."""
    port = free_port()
    log = home / "streamlit.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "bench.demo_time", "serve", "--seeds", seeds, "--port",
                                    str(port)], cwd=ROOT, env=env_for(home), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    break
            time.sleep(0.3)
        yield url, process.pid
    finally:
        from pafo.registry import RunRegistry

        with contextlib.suppress(Exception):
            registry = RunRegistry(home)
            for run in registry.list():
                if not run.done:
                    registry.cancel(run.id, wait=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def wait_idle(page, timeout: float = 120.0) -> None:
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                           timeout=timeout * 1000)


def click_demo(browser, url: str, home: Path, seeds: str, *, follow: bool):
    """Open the Data page, press Run the demo (and follow the run on Train in a second tab when ``follow``);
    returns the seconds from the click to the verdict on Compare and the run's :class:`WorkerWatch`."""
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT * 1000)
    page.goto(url)
    button = page.get_by_role("button", name="Run the demo")
    button.wait_for()
    wait_idle(page)
    clicked = time.perf_counter()
    button.click()
    page.wait_for_url("**/compare?run=*")
    watch = WorkerWatch(home, page.url.split("run=")[1].split("&")[0])
    watch.start()
    second = None
    if follow:
        second = browser.new_page(viewport=VIEWPORT)
        second.goto(f"{url}/train?run={watch.run_id}")
    verdict = page.get_by_text(VERDICT).first
    verdict.wait_for(timeout=TIMEOUT * 1000)
    seconds = time.perf_counter() - clicked
    shown, expected = int(VERDICT.search(verdict.inner_text()).group(1)), len(parse_seeds(seeds))
    if shown != expected:
        raise RuntimeError(f"Compare says over {shown} seeds; the demo ran {expected}")
    watch.join()
    for tab in (second, page):
        if tab is not None:
            tab.close()
    return seconds, watch


def parse_seeds(seeds: str) -> list[int]:
    from pafo.experiment import parse_seeds as parse

    return parse(seeds)


def browser_rows(seeds: str, home: Path, cache: str, browser) -> list[Row]:
    """The demo from the first click in a new app (and, warm, a second click answered from the registry)."""
    from pafo.registry import RunRegistry

    rows = []
    with app_server(home, seeds) as (url, server_pid):
        sampler = CpuSampler(server_pid)
        sampler.start()
        try:
            seconds, watch = click_demo(browser, url, home, seeds, follow=True)
        finally:
            sampler.stop()
        record = RunRegistry(home).load_result(watch.run_id)
        check_config(record.config, seeds)
        app_cpu, chromium_cpu = sampler.between(record.started_at, record.finished_at)
        rows.append(Row(BROWSER, seeds, cache, seconds, worker=record.finished_at - record.started_at,
                        cpu=watch.cpu, texts=embedded(record.result),
                        verdict=record.result["comparisons"]["pafo"]["verdict"],
                        extra={"app_cpu": app_cpu, "chromium_cpu": chromium_cpu, "still": watch.longest_still()}))
        if cache == "warm":  # the same demo again: the registry answers it with the run that just finished
            seconds, again = click_demo(browser, url, home, seeds, follow=False)
            reused = RunRegistry(home).get(again.run_id, refresh=False).reused_from
            rows.append(Row(BROWSER_AGAIN, seeds, "result reused" if reused else cache, seconds,
                            verdict=rows[-1].verdict))
    return rows


def paced(config: dict, *, out_dir: Path, progress, should_stop) -> dict:
    """A run target that costs no CPU: it reports progress (and one epoch's metrics) every 0.2 s for
    ``seconds``, as the demo's worker does, so the app's own cost of following a run can be measured alone."""
    from pafo.errors import RunCancelled

    seconds, started, epoch = float(config.get("seconds", 30)), time.monotonic(), 0
    while (elapsed := time.monotonic() - started) < seconds:
        if should_stop():
            raise RunCancelled()
        epoch += 1
        progress(elapsed / seconds, f"seed 1 of 1: baseline epoch {epoch}",
                 {"stage": "baseline", "epoch": epoch, "loss": 1.0 / epoch,
                  "val": {"overall": 0.7, "majority": 0.75, "minority": 0.6}})
        time.sleep(0.2)
    return {"paced": True}


def follow_cost(browser, seconds: float, scratch: Path) -> dict:
    """The app server's and Chromium's CPU per second while two tabs (Compare and Train) follow a run whose
    worker only sleeps (:func:`paced`): the price of watching, with no training competing for the cores."""
    from pafo import appstate
    from pafo.registry import RunRegistry

    home = scratch / "follow_cost"
    home.mkdir()
    config = {**appstate.demo_config().to_dict(), "target": "bench.demo_time:paced", "seconds": seconds + 30}
    with app_server(home, appstate.DEMO_SEEDS) as (url, server_pid):
        registry = RunRegistry(home)
        run_id = registry.submit(config, fingerprint="paced").id
        pages = []
        for name in ("compare", "train"):
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(f"{url}/{name}?run={run_id}")
            page.get_by_text(f"Run {run_id}").first.wait_for(timeout=120_000)
            pages.append(page)
        time.sleep(5)  # both tabs settled
        sampler = CpuSampler(server_pid)
        sampler.sample()
        start = time.time()
        time.sleep(seconds)
        sampler.sample()
        app, chromium = sampler.between(start - 1, time.time() + 1)
        for page in pages:
            page.close()
        registry.cancel(run_id, wait=10)
    return {"app": app, "chromium": chromium, "seconds": seconds}


# ------------------------------------------------------------------------------------------------ report


def fmt(value, digits: int = 1, suffix: str = "") -> str:
    if value is None or value != value:
        return "–"
    return f"{value:,.{digits}f}{suffix}"


def find(rows: list[Row], how: str, seeds: str, cache: str) -> Row | None:
    return next((r for r in rows if r.how == how and r.seeds == seeds and r.cache == cache), None)


def summary(rows: list[Row], seed_lists: list[str], follow: dict | None) -> list[str]:
    """The figures the issue sets targets for, each as measured in this go."""
    one, demo = seed_lists[0], seed_lists[-1]
    lines = []
    cli, cold = find(rows, "pafo experiment", one, "cold"), find(rows, BROWSER, demo, "cold")
    if cli and cold:
        lines.append(f"- cold demo in the browser (seeds {demo}, empty cache, first click → verdict on Compare): "
                     f"**{cold.seconds:.1f} s = {cold.seconds / cli.seconds:.2f}× the cold `pafo experiment` of "
                     f"seed {one}** ({cli.seconds:.1f} s, measured just before it); targets ≤ 2× and < 45 s")
        if cold.cpu and cli.cpu:  # CPU-seconds: what load inflates least
            lines.append(f"- the same two in CPU-seconds (the demo's worker vs the whole CLI process): "
                         f"{cold.cpu:.1f} vs {cli.cpu:.1f} = {cold.cpu / cli.cpu:.2f}×")
    warm = find(rows, BROWSER, demo, "warm")
    again = next((r for r in rows if r.how == BROWSER_AGAIN and r.seeds == demo), None)
    if warm:
        lines.append(f"- warm demo (seeds {demo}, embeddings cached, every model trained anew): "
                     f"**{warm.seconds:.1f} s**"
                     + (f"; the demo clicked again (the registry answers with the finished run): "
                        f"**{again.seconds:.1f} s**" if again else "") + "; target < 10 s")
    for row in (r for r in rows if r.how == BROWSER):
        alone = find(rows, RUNS, row.seeds, row.cache)
        if alone and row.worker and alone.worker:
            lines.append(f"- worker of the demo (seeds {row.seeds}, {row.cache}) in the browser vs alone (`pafo runs "
                         f"start` + `runs wait`): {row.worker:.1f} s vs {alone.worker:.1f} s = "
                         f"**{row.worker / alone.worker:.2f}×**; CPU-s {fmt(row.cpu)} vs {fmt(alone.cpu)}")
    for row in (r for r in rows if "app_cpu" in r.extra):
        lines.append(f"- app server while two tabs followed that run (seeds {row.seeds}, {row.cache}): "
                     f"**{100 * row.extra['app_cpu']:.1f}% of a core** (target < 5%); Chromium, both tabs: "
                     f"{100 * row.extra['chromium_cpu']:.1f}%")
    if follow:
        lines.append(f"- the price of watching alone (a run whose worker only sleeps, followed on Compare and Train "
                     f"for {follow['seconds']:.0f} s): app server **{100 * follow['app']:.1f}%** of a core, Chromium "
                     f"{100 * follow['chromium']:.1f}%")
    still = [r for r in rows if "still" in r.extra]
    if still:
        worst = max(still, key=lambda r: r.extra["still"][0])
        seconds, line = worst.extra["still"]
        lines.append(f"- longest time the progress line stood still while a worker ran: {seconds:.1f} s "
                     f"(\"{line}\", {worst.how}, seeds {worst.seeds}, {worst.cache})")
    return lines


def report(rows: list[Row], header: str, seed_lists: list[str], follow: dict | None) -> str:
    lines = [header, "", *summary(rows, seed_lists, follow), "",
             "| how | seeds | cache | user waits | worker run | worker CPU-s | texts embedded | verdict | load |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for row in rows:
        lines.append(f"| {row.how} | {row.seeds} | {row.cache} | {fmt(row.seconds)} s | "
                     f"{fmt(row.worker, suffix=' s')} | {fmt(row.cpu)} | "
                     f"{'–' if row.texts is None or row.texts < 0 else f'{row.texts:,}'} | {row.verdict} | "
                     f"{fmt(row.load)} |")
    lines += ["", "User waits: the command from start to exit, or in the browser the click on **Run the demo** until "
              "Compare shows the verdict (\"… over N seeds …\"). Worker run: the registry's started → finished of "
              "the run (the CLI has no worker; its CPU-s are the whole process's). Cold: an empty `$PAFO_HOME`; "
              "warm: a new home holding only the embeddings cache, so every model trains anew. Load: the 1-minute "
              "load average when the row began (2 cores: above 2, other work shared them)."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def plan(seed_lists: list[str], hows: list[str], caches: list[str]) -> list[tuple[str, str, str]]:
    """(cache, how, seeds) in the order measured: cold before warm; the cold browser demo of the last seed list
    right after the cold CLI run of the first, so the ratio the issue asks for compares neighbours in time."""
    steps = [(cache, how, seeds) for cache in CACHES if cache in caches for how in HOWS if how in hows
             for seeds in seed_lists]
    pair = (("cold", "cli", seed_lists[0]), ("cold", "browser", seed_lists[-1]))
    if all(step in steps for step in pair):
        steps.remove(pair[1])
        steps.insert(steps.index(pair[0]) + 1, pair[1])
    return steps


def measure(seed_lists: list[str], hows: list[str], caches: list[str], scratch: Path,
            follow_seconds: float) -> tuple[list[Row], dict | None]:
    rows: list[Row] = []
    follow = None
    browser_cm = contextlib.nullcontext(None)
    if "browser" in hows:
        from playwright.sync_api import sync_playwright

        browser_cm = sync_playwright()
    with browser_cm as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS) if playwright else None
        embeddings = None  # a cold home whose embeddings cache the warm homes copy
        for i, (cache, how, seeds) in enumerate(plan(seed_lists, hows, caches)):
            home = scratch / f"{i:02d}_{how}_{cache}_{seeds.replace(',', '_')}"
            if cache == "cold":
                home.mkdir()
            else:
                if embeddings is None:  # warm only: fill an embeddings cache first (not reported)
                    embeddings = scratch / "embeddings_source"
                    embeddings.mkdir()
                    run_timed([*CLI, "experiment", *demo_flags(seed_lists[-1])], embeddings)
                home = warm_home(embeddings, home)
            load = os.getloadavg()[0]
            if how == "cli":
                new = [cli_row(seeds, home, cache, scratch)]
            elif how == "runs":
                new = [runs_row(seeds, home, cache)]
            else:
                new = browser_rows(seeds, home, cache, browser)
            for row in new:
                row.load = load
                print(f"  {row.how}, seeds {seeds}, {row.cache}: {row.seconds:.1f} s (load {load:.1f})",
                      file=sys.stderr)
            rows += new
            if cache == "cold" and embeddings is None:
                embeddings = home
        if browser and follow_seconds > 0:
            follow = follow_cost(browser, follow_seconds, scratch)
        if browser:
            browser.close()
    return rows, follow


def serve(argv: list[str]) -> None:
    """``streamlit run app.py`` with the demo on other seeds (the app reads ``appstate.DEMO_SEEDS`` per click)."""
    parser = argparse.ArgumentParser(prog="python -m bench.demo_time serve")
    parser.add_argument("--seeds", required=True)
    parser.add_argument("--port", required=True)
    args = parser.parse_args(argv)
    from streamlit.web import cli as streamlit_cli

    from pafo import appstate

    appstate.DEMO_SEEDS = args.seeds
    sys.argv = ["streamlit", "run", str(ROOT / "app.py"), "--server.port", args.port, "--server.headless", "true"]
    sys.exit(streamlit_cli.main())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.demo_time", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", default=["0", "0-4"], help="seed lists to time (default: 0 0-4)")
    parser.add_argument("--only", nargs="+", choices=HOWS, default=list(HOWS),
                        help="measure only these ways of running the demo (default: all)")
    parser.add_argument("--caches", nargs="+", choices=CACHES, default=list(CACHES), help="default: cold warm")
    parser.add_argument("--follow-seconds", type=float, default=30.0,
                        help="how long to measure the app's CPU following a sleeping run (0: skip)")
    parser.add_argument("--out", type=Path, default=None, help="write here instead of bench/RESULTS.md")
    args = parser.parse_args(argv)
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="demo_time_") as scratch:
        rows, follow = measure(args.seeds, args.only, args.caches, Path(scratch), args.follow_seconds)
    load_after = os.getloadavg()
    shown = [a for i, a in enumerate(argv) if a != "--out" and (i == 0 or argv[i - 1] != "--out")]
    command = " ".join(["python -m bench.demo_time", *shown])  # without --out: the command that publishes
    header = "\n".join([
        "## The demo: from the click to the verdict, cold and warm, one seed and five",
        "",
        f"- command: `{command}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {time.time() - started:.0f} s in all",
        f"- machine: {machine()}",
        f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}"
        + (" — **under load**: other work shared the 2 cores, so every time here is inflated" if
           max(load_before[0], load_after[0]) > 2.5 else ""),
        f"- Python {platform.python_version()}, Streamlit {version('streamlit')}, torch {version('torch')}; browser: "
        "Debian's Chromium, headless, on the same cores",
    ])
    text = report(rows, header, args.seeds, follow)
    print(text)
    publish("demo", text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
