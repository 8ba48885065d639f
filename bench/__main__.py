"""``python -m bench``: list the sections of bench/RESULTS.md with the command and date behind each.

Each benchmark (``python -m bench.quality``, ``bench.encoders``, ``bench.support``, ``bench.registry``,
``bench.fingerprint``, ``bench.app_render``) rewrites its own section of RESULTS.md (:func:`bench.common.publish`),
so one rerun never clobbers another's figures and every figure is in the tree once.
"""

import re

from bench.common import RESULTS, SECTIONS, sections


def main() -> None:
    found = sections(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in [*SECTIONS, *(n for n in found if n not in SECTIONS)]:
        text = found.get(name)
        command = re.search(r"`(python -m bench[^`]*)`", text or "")
        print(f"{name:28s} {'missing' if text is None else command.group(1) if command else '(no command line)'}")


if __name__ == "__main__":
    main()
