"""Inputs checked before use, each bad input built here byte by byte: safetensors headers that lie (overlapping,
out-of-order or out-of-file offsets, sizes that do not match dtype x shape, a name given twice, trailing bytes),
shard indexes that point outside their folder or hold non-strings, images whose header declares a decompression
bomb, and names with terminal control characters. Each is one line naming the file (and tensor); nothing is
written."""

import json
import struct
import zlib

import pytest
import torch
from safetensors.torch import save_file

from mmmerge.errors import ImageTooLargeError, MMMergeError, UnreadableFileError
from mmmerge.images import DEFAULT_MAX_PIXELS, image_size
from mmmerge.io import read_tensors
from mmmerge.io.reader import SAFETENSORS_DTYPES
from mmmerge.io.safetensors_header import DTYPE_BYTES
from cli_run import one_line_error, run
from tiny_world import build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def write_raw(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def entry(begin, end, shape=(2,), dtype="F32"):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


BAD_HEADERS = {
    "overlap": ({"a": entry(0, 8), "b": entry(4, 12)}, 12, "tensor b: its data overlaps tensor a's"),
    "gap": ({"a": entry(0, 8), "b": entry(12, 20)}, 20, "tensor b: its data offsets leave a gap of 4 bytes"),
    "past_the_end": ({"a": entry(0, 8), "b": entry(8, 16)}, 12,
                     "tensor b: its data offsets do not fit its shape or the file"),
    "size_vs_shape": ({"a": entry(0, 12)}, 12, "tensor a: its data offsets do not fit its shape"),
    "reversed": ({"a": entry(8, 0)}, 8, "tensor a: its data offsets do not fit"),
    "trailing": ({"a": entry(0, 8)}, 16, "8 bytes after the last tensor's data"),
    "negative_dim": ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8, "non-negative integers"),
    "float_dim": ({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, 8, "non-negative integers"),
    "bad_dtype": ({"a": entry(0, 8, dtype="F128")}, 8, "tensor a: dtype F128 is not one mmmerge reads"),
    "extra_key": ({"a": {**entry(0, 8), "oops": 1}}, 8, "needs exactly dtype, shape and data_offsets"),
    "metadata": ({"__metadata__": {"format": 1}, "a": entry(0, 8)}, 8, "__metadata__ is not a map of strings"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_a_lying_safetensors_header_is_refused_naming_the_file(tmp_path, case):
    header, nbytes, needle = BAD_HEADERS[case]
    write_raw(tmp_path / "m.safetensors", header, bytes(nbytes))
    with pytest.raises(UnreadableFileError) as e:
        read_tensors(tmp_path / "m.safetensors")
    assert str(e.value).startswith(str(tmp_path / "m.safetensors")) and needle in str(e.value), str(e.value)


def test_a_name_given_twice_and_an_absurd_header_length(tmp_path):
    raw = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], ' \
          b'"data_offsets": [4, 8]}}'
    (tmp_path / "twice.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    with pytest.raises(UnreadableFileError, match="a is given twice"):
        read_tensors(tmp_path / "twice.safetensors")
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(UnreadableFileError, match="header length runs past the end of the file"):
        read_tensors(tmp_path / "huge.safetensors")


def test_files_safetensors_writes_still_read_and_dtype_tables_agree(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int16), "c": torch.randn(4).bfloat16(),
               "empty": torch.zeros(0, 3), "flag": torch.tensor([True, False])}
    save_file(tensors, tmp_path / "m.safetensors", metadata={"format": "pt"})
    got = {k: t.load() for k, t in read_tensors(tmp_path / "m.safetensors").items()}
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)
    assert set(DTYPE_BYTES) == set(SAFETENSORS_DTYPES)
    assert all(DTYPE_BYTES[k] == SAFETENSORS_DTYPES[k].itemsize for k in DTYPE_BYTES)


def test_merge_refuses_overlapping_offsets_and_escapes_control_characters(world, tmp_path):
    """The hostile run's file: two tensors over the same bytes, merged without a word before. Its tensor name
    carries an ANSI escape and a newline, which reach the terminal escaped, on one line."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((world["lm"] / "config.json").read_text())
    evil = "model.norm.weight\x1b[31m\nmerged fine"
    write_raw(bad / "model.safetensors", {"model.embed_tokens.weight": entry(0, 8), evil: entry(4, 12)}, bytes(12))
    (tmp_path / "r.yml").write_text(json.dumps({"merge_method": "linear", "models": [
        {"model": str(world["lm"]), "parameters": {"weight": 1}}, {"model": str(bad), "parameters": {"weight": 1}}]}))
    r = run("merge", tmp_path / "r.yml", "--out", tmp_path / "out", "--quiet")
    one_line_error(r, str(bad / "model.safetensors"), "overlaps", "model.norm.weight\\x1b[31m\\nmerged fine")
    assert "\x1b" not in r.stderr and not (tmp_path / "out").exists()


def test_control_characters_in_a_path_are_escaped(tmp_path):
    r = run("inspect", tmp_path / "model\x1b]0;pwned\x07\rdone")
    one_line_error(r, "model\\x1b]0;pwned\\x07\\rdone")
    assert "\x1b" not in r.stderr and "\r" not in r.stderr


@pytest.mark.parametrize("shard, needle", [("../elsewhere.safetensors", "not a file in the index's own folder"),
                                           ("/etc/passwd", "not a file in the index's own folder"),
                                           ("sub/model.safetensors", "not a file in the index's own folder"),
                                           (7, "its shard is int 7, not a file name"),
                                           (None, "its shard is NoneType None, not a file name"),
                                           (["a.safetensors"], "its shard is list")])
def test_a_shard_index_may_name_only_files_in_its_own_folder(world, tmp_path, shard, needle):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text((world["lm"] / "config.json").read_text())
    save_file({"w": torch.ones(2)}, tmp_path / "elsewhere.safetensors")
    index = tmp_path / "m" / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"w": shard}}))
    with pytest.raises(UnreadableFileError, match="tensor w: ") as e:
        read_tensors(tmp_path / "m")
    assert needle in str(e.value)
    one_line_error(run("inspect", tmp_path / "m"), str(index), needle)


def bomb_png(path, width: int, height: int):
    """A PNG whose header declares width x height pixels, with almost no data: what a decompression bomb's header
    says. Only the header may be read."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64)))
                     + chunk(b"IEND", b""))
    return path


def test_an_image_is_size_checked_from_its_header_with_a_limit_that_can_be_raised(tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(ImageTooLargeError, match=r"30000 x 30000 pixels \(900.0 megapixels\) is over the limit of "
                                                 r"100 megapixels; it was not decoded \(raise the limit with "
                                                 r"--max-image-pixels N"):
        image_size(bomb)
    assert DEFAULT_MAX_PIXELS == 100_000_000
    assert image_size(bomb, max_pixels=10**9) == (30000, 30000)  # raised: the header passes, nothing decoded


def copied_images(vqa, tmp_path):
    """The VQA set's images copied into a folder of the test's own (one is about to be replaced by a bomb); the
    folder and its first image."""
    images = tmp_path / "images"
    images.mkdir()
    for p in vqa["images"].iterdir():
        (images / p.name).write_bytes(p.read_bytes())
    return images, sorted(images.iterdir())[0]


def test_eval_and_stitch_refuse_a_bomb_before_decoding_and_honour_the_option(world, tmp_path):
    vqa = world["vqa"]
    images, first = copied_images(vqa, tmp_path)
    args = ("eval", world["llava"], "--task", "vqav2", "--questions", vqa["questions"], "--annotations",
            vqa["annotations"], "--images", images, "--out", tmp_path / "out", "--quiet", "--max-new-tokens", "2")
    one_line_error(run(*args, "--max-image-pixels", "1000"), str(first), "over the limit of 0.001 megapixels",
                   "--max-image-pixels")  # a 40 x 48 image, over a limit set low: the option is used
    bomb_png(first, 30000, 30000)
    one_line_error(run(*args), str(first), "900.0 megapixels", "it was not decoded")
    captions = tmp_path / "caps.jsonl"
    captions.write_text(json.dumps({"image": str(first), "caption": "a red square"}) + "\n")
    r = run("stitch", "--vision", world["vision"], "--language", world["lm"], "--projector-type", "linear",
            "--align-data", captions, "--out", tmp_path / "out", "--quiet")
    one_line_error(r, f"{captions}:1: image {first}", "900.0 megapixels")
    assert not (tmp_path / "out").exists()


def test_generate_calibrate_and_search_refuse_an_image_over_the_limit_before_decoding(world, tmp_path):
    """105 megapixels: over mmmerge's limit but under twice PIL's, where PIL would only warn and decode."""
    from PIL import Image

    from mmmerge.searching.spec import load_spec

    assert DEFAULT_MAX_PIXELS < 10500 * 10000 < 2 * Image.MAX_IMAGE_PIXELS
    vqa = world["vqa"]
    images, first = copied_images(vqa, tmp_path)
    bomb_png(first, 10500, 10000)
    one_line_error(run("generate", world["llava"], "--image", first, "--prompt", "what is it?"), str(first),
                   "105.0 megapixels", "it was not decoded")
    calib = tmp_path / "calib.jsonl"
    calib.write_text(json.dumps({"image": str(first), "question": "what is it?"}) + "\n")
    args = ("calibrate", world["llava"], "--data", calib, "--out", tmp_path / "stats.safetensors")
    one_line_error(run(*args), f"{calib}: line 1: image {first}", "105.0 megapixels", "--max-image-pixels")
    one_line_error(run(*args, "--max-image-pixels", "1000", "--data", calib), "over the limit of 0.001 megapixels")
    assert not (tmp_path / "stats.safetensors").exists()
    task = {"task": "vqav2", "questions": str(vqa["questions"]), "annotations": str(vqa["annotations"]),
            "images": str(images)}
    spec = {"merge_method": "linear", "models": [{"model": str(world["lm"]), "parameters": {"weight": {"search": [0.5, 1.0]}}}],
            "search": {"trials": 1, "tasks": [task]}}
    with pytest.raises(MMMergeError, match=rf"question \d+: image {first}: .*105.0 megapixels.*max_image_pixels: N"):
        load_spec(spec)
    spec["search"]["max_image_pixels"] = 2 * 10**8
    assert load_spec(spec).splits[0].dev  # the limit raised: the header passes


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_named_pytorch_model_bin_are_one_line(world, tmp_path, seed):
    """Random bytes make torch's weights-only unpickler raise anything (IndexError, an unknown operand): an
    unreadable file, not a pickle that would run code."""
    import random

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text((world["lm"] / "config.json").read_text())
    rnd = random.Random(seed)
    (folder / "pytorch_model.bin").write_bytes(rnd.randbytes(rnd.randint(1, 4096)))
    r = run("inspect", folder)
    one_line_error(r, str(folder / "pytorch_model.bin"))
    assert "not a readable PyTorch checkpoint" in r.stderr or "refused to unpickle" in r.stderr


def test_a_weights_name_on_a_device_is_not_a_regular_file(world, tmp_path):
    """A symlink to /dev/zero (endless) named like a weights file, alone or inside a model folder."""
    import os

    link = tmp_path / "x.safetensors"
    os.symlink(os.devnull if not os.path.exists("/dev/zero") else "/dev/zero", link)
    one_line_error(run("inspect", link), str(link), "not a regular file or folder")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text((world["lm"] / "config.json").read_text())
    os.symlink(link, folder / "model.safetensors")
    one_line_error(run("inspect", folder), str(folder / "model.safetensors"), "not a regular file")


def test_a_transformers_config_with_a_text_width_is_one_line(world, tmp_path):
    """`hidden_size: "64"` in a CLIP vision config: transformers' strict config refuses it; mmmerge names the folder."""
    folder = tmp_path / "vision"
    folder.mkdir()
    for p in world["vision"].iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": str(config["hidden_size"])}))
    for args in (("inspect", folder), ("convert", folder, "--out", tmp_path / "out")):
        one_line_error(run(*args), str(folder), "config is invalid", "hidden_size")
    assert not (tmp_path / "out").exists()
