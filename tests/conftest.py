"""Test-wide settings: nothing the tests compute is cached outside their own temporary folders."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# the tiny-model builders of examples/ are the tests' too
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

if "MMMERGE_CACHE_DIR" not in os.environ:
    os.environ["MMMERGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmmerge-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MMMERGE_CACHE_DIR"], ignore_errors=True)
