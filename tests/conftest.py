"""Test-wide settings: nothing the tests compute is cached outside their own temporary folders."""

import os
import tempfile

os.environ.setdefault("MMMERGE_CACHE_DIR", tempfile.mkdtemp(prefix="mmmerge-test-cache-"))
