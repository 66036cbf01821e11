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


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny LLaVA with its processor, for the evaluation tests (a test module may bring its own)."""
    from tiny_llava import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), seed=3)


@pytest.fixture(scope="session")
def vqa(tmp_path_factory):
    """Eight VQAv2 questions with annotations and images, in the official files."""
    import eval_data

    return eval_data.vqav2(tmp_path_factory.mktemp("vqav2"), n=8)
