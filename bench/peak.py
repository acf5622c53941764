"""Run ``python -m MODULE ARGS…`` in this process, then write its peak RSS to a file.

    python -m bench.peak OUT MODULE [ARGS…]

The peak is ``VmHWM`` from ``/proc/self/status`` (KiB), written to ``OUT`` at exit: the
high-water mark of this process's own memory since it started. (``wait4``'s
``ru_maxrss`` would not do for a child of a large bench process: Linux counts in it the
memory of the parent it was forked from.)
"""

from __future__ import annotations

import atexit
import runpy
import sys
from pathlib import Path


def peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    out, module, *args = sys.argv[1:]
    atexit.register(lambda: Path(out).write_text(f"{peak_kib()}\n"))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
