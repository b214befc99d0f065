"""Stage lines for a long export: what runs now, how long it took, and the peak memory so far.

A 1.7B export spends minutes in single library calls (XNNPACK lowering ~10 min on 2 cores), so each stage
prints a start line, a heartbeat every `HEARTBEAT_S` while it runs, and a done line with its seconds and the
process's peak RSS; the times end up in the manifest (`export.stages`). Lines go to stderr, so the CLI's
stdout stays the result.

    alignkd export CKPT --target executorch --quant 8da4w -o out/b   # prints "export: lower ..." lines
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from contextlib import contextmanager

HEARTBEAT_S = 60.0


def peak_rss_bytes() -> int:
    """The process's peak resident set so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def rss_now() -> dict[str, int] | None:
    """The resident set now, split into anonymous memory and mapped files (a memory-mapped checkpoint's pages are
    the latter: clean, but counted in the peak RSS); None where /proc/self/status is not there (macOS)."""
    try:
        lines = open("/proc/self/status").read().splitlines()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    try:
        return {key: int(fields[name].split()[0]) * 1024 for key, name in (("anon", "RssAnon"), ("file", "RssFile"))}
    except (KeyError, ValueError, IndexError):
        return None


class Stages:
    """`with stages("lower"): ...` prints progress and records {name: seconds} in `times`."""

    def __init__(self, console=None, heartbeat_s: float = HEARTBEAT_S):
        from rich.console import Console

        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.heartbeat_s, self.times, self.t0 = heartbeat_s, {}, time.perf_counter()

    def _line(self, text: str) -> None:
        now = rss_now()
        split = f"; now {now['anon'] / 1e9:.1f} GB anonymous + {now['file'] / 1e9:.1f} GB mapped files" if now else ""
        self.console.print(f"[dim]export {time.perf_counter() - self.t0:6.0f}s[/] {text} "
                           f"[dim](peak RSS {peak_rss_bytes() / 1e9:.1f} GB{split})[/]")

    @contextmanager
    def __call__(self, name: str, detail: str = ""):
        self._line(f"[bold]{name}[/]{': ' + detail if detail else ''} ...")
        start, stop = time.perf_counter(), threading.Event()

        def beat():
            while not stop.wait(self.heartbeat_s):
                self._line(f"{name}: still running, {time.perf_counter() - start:.0f} s")

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
        self.times[name] = round(time.perf_counter() - start, 2)
        self._line(f"[green]{name}[/] done in {self.times[name]:.1f} s")
