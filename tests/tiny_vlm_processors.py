"""Tiny checkpoints WITH their processors, one per family: examples/tiny_family_checkpoints.py's builder."""

from tiny_family_checkpoints import *  # noqa: F401,F403
from tiny_family_checkpoints import build_tiny_vlm  # noqa: F401
