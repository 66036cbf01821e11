"""Test-wide settings: nothing the tests compute is cached outside their own temporary folders."""

import atexit
import os
import shutil
import tempfile

if "MMMERGE_CACHE_DIR" not in os.environ:
    os.environ["MMMERGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmmerge-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MMMERGE_CACHE_DIR"], ignore_errors=True)
