"""Which of the project's files and functions one ``tfnn train`` passes through, and how
many processes it runs: the command is run in this process under ``sys.setprofile`` (every
thread), while a sampler lists the process's descendants.

    python benchmarks/trace_run.py --data-dir DIR [tfnn train flags...]

Run it in an empty directory: it trains for real (default one epoch, 16 hidden units).
"""

import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import psutil

import tfnn
from cli import main as tfnn_main

ROOT = Path(tfnn.__file__).resolve().parents[1]
OURS = [str(ROOT / name) for name in ("tfnn", "flows", "cli", "tasks")]


def main() -> None:
    seen: dict[str, set[str]] = {}

    def profile(frame, event, arg):
        if event == "call":
            code = frame.f_code
            if code.co_filename.startswith(tuple(OURS)):
                seen.setdefault(code.co_filename, set()).add(code.co_qualname)

    children: dict[int, str] = {}
    stop = threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not stop.wait(0.1):
            for child in me.children(recursive=True):
                with suppress(psutil.Error):  # it ended meanwhile
                    children.setdefault(child.pid, " ".join(child.cmdline())[:120])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    flags = sys.argv[1:]
    threading.setprofile(profile)
    sys.setprofile(profile)
    start = time.perf_counter()
    try:
        code = tfnn_main(["train", "--epochs", "1", "--hidden-sizes", "16", *flags])
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        stop.set()
    seconds = time.perf_counter() - start
    functions = sum(len(names) for names in seen.values())
    print(f"exit code {code} after {seconds:.1f} s")
    print(f"project files passed through: {len(seen)}; project functions: {functions}")
    for path in sorted(seen):
        print(f"    {Path(path).relative_to(ROOT)}: {len(seen[path])}")
    print(f"processes besides this one: {len(children)}")
    for pid, command in children.items():
        print(f"    {pid}: {command}")


if __name__ == "__main__":
    main()
