"""Checkpoint I/O: lazy readers, the streaming sharded writer, atomic output folders."""

from .atomic import atomic_output_dir, check_output_dir
from .claim import claim_output, writes_output
from .reader import read_file, read_folder, read_index, read_json, read_jsonl, read_tensors
from .writer import write_safetensors

__all__ = ["atomic_output_dir", "check_output_dir", "claim_output", "read_file", "read_folder", "read_index",
           "read_json", "read_jsonl", "read_tensors", "write_safetensors", "writes_output"]
