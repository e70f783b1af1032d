"""A checkpoint writer that can be killed cheaply: it imports torch once, then for every line
``FORMAT PATH STEP NUMEL`` on stdin forks a child that writes that checkpoint with the real library
and exits, and prints the child's pid. Tests SIGKILL the child at random moments."""

from __future__ import annotations

import os
import signal
import sys
import warnings

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.helpers import writers  # noqa: E402

WRITE = {"torch": writers.write_torch, "safetensors": writers.write_safetensors, "dcp": writers.write_dcp}


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print("ready", flush=True)
    for line in sys.stdin:
        fmt, path, step, numel = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                WRITE[fmt](writers.Path(path), int(step), int(numel))
            finally:
                os._exit(0)
        print(pid, flush=True)


if __name__ == "__main__":
    main()
