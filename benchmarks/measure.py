"""Run a command in its own process and measure it: wall time, peak resident memory (the kernel's high-water
mark), peak anonymous memory and peak file-backed memory sampled from /proc, and the bytes it read from and wrote
to storage. Shared by the merge benchmarks.

Peak memory is read from a small runner process, not this one: Linux carries the parent's resident size across
fork and exec into a child's `ru_maxrss`, so a child of a big process would start with the parent's peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

RUNNER = r"""
import json, os, subprocess, sys, tempfile, time

def status(pid):
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem"):
                    fields[key] = int(value.split()[0])
    except OSError:
        pass
    return fields

def io(pid):
    try:
        with open(f"/proc/{pid}/io") as f:
            return {k: int(v) for k, v in (line.split(": ") for line in f)}
    except OSError:
        return {}

for line in sys.stdin:
    cmd, env, interval = json.loads(line)
    os.sync()  # no command starts behind the previous one's unwritten output
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        anon = file = 0
        counters = {}
        while proc.poll() is None:
            s = status(proc.pid)
            anon, file = max(anon, s.get("RssAnon", 0)), max(file, s.get("RssFile", 0) + s.get("RssShmem", 0))
            counters = io(proc.pid) or counters
            time.sleep(interval)
        status_code = proc.returncode
        wall = time.perf_counter() - start
        err.seek(0)
        tail = err.read().decode(errors="replace")[-2000:]
    import resource
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far
    print(json.dumps([wall, peak / 1024, anon / 1024, file / 1024, counters.get("read_bytes", 0),
                      counters.get("write_bytes", 0), status_code, tail]), flush=True)
"""


@dataclass
class Run:
    wall: float  # seconds
    peak_rss: float  # MiB, the kernel's high-water mark of resident memory (anonymous + mapped files)
    peak_anon: float  # MiB, sampled RssAnon
    peak_file: float  # MiB, sampled RssFile + RssShmem (mapped input and output pages the kernel can drop)
    read_bytes: int  # from storage (page-cache misses), as last sampled
    write_bytes: int


class Runner:
    """One runner process per measured command: `ru_maxrss` of the runner's children is then that command's."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval

    def run(self, cmd: list[str], env: dict | None = None) -> Run:
        proc = subprocess.Popen([sys.executable, "-c", RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        out, _ = proc.communicate(json.dumps([cmd, env or dict(os.environ), self.interval]) + "\n")
        wall, peak, anon, file, read, written, code, tail = json.loads(out.splitlines()[-1])
        if code != 0:
            sys.exit(f"failed ({code}): {' '.join(cmd)}\n{tail}")
        return Run(wall, peak, anon, file, read, written)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def drop_page_cache() -> bool:
    """Empty the page cache (root only): the next reads come from the disk. False where it is not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def machine_line() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)"


def tool_env(**values: str) -> dict:
    """The environment the compared tools run in: this one with `values` set, and Python writing bytecode as it
    does by default (some sandboxes set PYTHONDONTWRITEBYTECODE; pip installs mergekit with its bytecode compiled,
    while an editable mmmerge would then compile its modules again in every run)."""
    env = {**os.environ, **values}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env
