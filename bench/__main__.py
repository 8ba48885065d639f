"""``python -m bench``: assemble bench/RESULTS.md from the sections each benchmark writes.

Each benchmark (``python -m bench.encoders``, ``bench.support``, ``bench.quality``, ``bench.registry``,
``bench.app_render``) writes its own ``RESULTS_<name>.md`` with machine, date and command; this joins them in a
fixed order so one rerun never clobbers another's figures.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ("quality", "quality_tfidf", "quality_speed", "tuning", "tuning_baseline_synthetic", "tuning_baseline_dsp",
         "encoders", "support", "registry", "app")


def main() -> None:
    parts = ["# Benchmark results", "",
             "Every figure below was printed by the command named in its section, on the machine and date given "
             "there. Rerun a benchmark, then `python -m bench` to rebuild this file.", ""]
    for name in ORDER:
        section = HERE / f"RESULTS_{name}.md"
        if section.exists():
            parts += [section.read_text().rstrip(), ""]
    (HERE / "RESULTS.md").write_text("\n".join(parts) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
