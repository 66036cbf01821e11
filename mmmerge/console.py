"""The `mmmerge` executable: `cli.main` in a process that ends when it returns.

A command's own work can be a second or two (a linear merge of 270M parameters), so the interpreter's
bookkeeping around it shows: importing torch runs the cyclic garbage collector over its hundreds of
thousands of new objects again and again, and the collection the interpreter runs at exit scans every
object still alive (about half a second after a 271M linear merge, in perf's samples). Neither
finds garbage worth the time here, so the imports run with the collector off and every object alive then,
or at the end, is frozen out of its scans (`gc.freeze`). `cli.main` itself, which tests and scripts call
in their own processes, leaves the collector alone.
"""

from __future__ import annotations

import gc


def main() -> int:
    gc.disable()
    try:
        from .cli import main as run_command
    finally:
        gc.freeze()
        gc.enable()
    try:
        return run_command()
    finally:
        gc.freeze()
