"""Readers and the streaming writer, checked against the safetensors library and torch.load."""

import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mmmerge.checkpoint import LazyTensor, chunk, concat
from mmmerge.errors import OutputExistsError, ShapeMismatchError, UnreadableFileError, UnsafeCheckpointError
from mmmerge.io import atomic_output_dir, read_tensors, write_safetensors
from mmmerge.io.check import check_tensors

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int8, torch.bool, torch.float8_e4m3fn]


def sample_tensors():
    g = torch.Generator().manual_seed(0)
    out = {}
    for i, dt in enumerate(DTYPES):
        x = torch.randn(3, 5 + i, generator=g) * 10
        out[f"t{i}.{str(dt)[6:]}"] = x.to(dt)
    out["scalar"] = torch.tensor(2.5)
    out["empty"] = torch.zeros(0, 4)
    return out


def test_writer_output_is_read_by_safetensors(tmp_path):
    tensors = sample_tensors()
    files = write_safetensors(tmp_path, {k: LazyTensor.of(v) for k, v in tensors.items()}, metadata={"who": "test"})
    assert files == ["model.safetensors"]
    back = load_file(tmp_path / "model.safetensors")
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt", "who": "test"}


def test_sharded_writer_and_index_reader(tmp_path):
    tensors = {f"layer.{i}.w": torch.full((64, 64), float(i)) for i in range(10)}  # 16 KiB each
    files = write_safetensors(tmp_path, {k: LazyTensor.of(v) for k, v in tensors.items()}, max_shard_bytes=40_000)
    assert files[-1] == "model.safetensors.index.json" and len(files) == 6  # two tensors a shard
    index = json.loads((tmp_path / files[-1]).read_text())
    assert index["metadata"]["total_size"] == 10 * 64 * 64 * 4
    for name, shard in index["weight_map"].items():
        assert torch.equal(load_file(tmp_path / shard)[name], tensors[name])
    lazy = read_tensors(tmp_path)
    assert set(lazy) == set(tensors)
    assert all(torch.equal(lazy[k].load(), tensors[k]) for k in tensors)


def test_reader_is_lazy_and_knows_shapes(tmp_path):
    save_file({"a": torch.ones(2, 3, dtype=torch.bfloat16)}, tmp_path / "x.safetensors")
    calls = []
    t = read_tensors(tmp_path / "x.safetensors")["a"]
    assert t.shape == (2, 3) and t.dtype == torch.bfloat16 and t.nbytes == 12
    wrapped = t.derive(lambda x: calls.append(1) or x.T, (3, 2))
    assert calls == []
    assert wrapped.load().shape == (3, 2) and calls == [1]


def test_chunk_and_concat_are_inverse():
    fused = torch.arange(24.0).reshape(6, 4)
    parts = chunk(LazyTensor.of(fused), 3)
    assert [p.shape for p in parts] == [(2, 4)] * 3
    assert torch.equal(parts[1].load(), fused[2:4])
    assert torch.equal(concat(parts).load(), fused)


def test_pickle_reader_takes_weights_only(tmp_path):
    sd = {"w": torch.randn(4, 4), "b": torch.randn(4)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "m.pt")
    lazy = read_tensors(tmp_path / "m.pt")
    assert set(lazy) == {"w", "b"} and torch.equal(lazy["w"].load(), sd["w"])


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": Exploit()}, f)
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin: refused to unpickle"):
        read_tensors(tmp_path / "pytorch_model.bin")
    assert not (tmp_path / "PWNED").exists()


def test_corrupt_files_name_the_file(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UnreadableFileError, match="bad.safetensors"):
        read_tensors(tmp_path / "bad.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": "missing.safetensors"}}')
    with pytest.raises(UnreadableFileError, match="missing.safetensors: no such file"):
        read_tensors(tmp_path / "model.safetensors.index.json")


def test_atomic_output_dir(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "half.safetensors").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_output_dir(out) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(OutputExistsError, match="not empty"):
        with atomic_output_dir(out):
            pass
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [".mmmerge-output", "b"]  # the marker --force looks for
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_writer_checks_produced_shape(tmp_path):
    bad = LazyTensor((2, 2), torch.float32, lambda: torch.zeros(3))
    with pytest.raises(ShapeMismatchError, match=r"tensor x: produced shape \(3,\), planned \(2, 2\)"):
        write_safetensors(tmp_path, {"x": bad})


def test_check_tensors_names_the_first_problem_and_counts_them():
    expected = {"a": (2, 3), "b": (4,), "c": (1,)}
    check_tensors(expected, {"a": torch.zeros(2, 3), "b": (4,), "c": (1,)}, "f")  # tensors or shapes
    check_tensors(expected, {"a": (2, 3), "b": (4,), "c": (1,), "d": (9,)}, "f", allow_unexpected=True)
    check_tensors(expected, {"a": (2, 3), "b": (4,), "c": (1,), "t": (5,)}, "f", optional={"t": (5,), "u": (6,)})
    cases = [
        ({"a": (2, 3), "d": (9,), "b": (5,)}, {},
         "f: tensor c is missing from W (C has it with shape (1,)); 1 of 3 missing, 1 wrongly shaped, 1 unexpected"),
        ({"a": (3, 2), "b": (4,), "c": (1,), "t": (6,)}, {"t": (5,)},
         "f: tensor a has shape (3, 2) in W but (2, 3) in C; 2 wrongly shaped"),
        ({"a": (2, 3), "b": (4,), "c": (1,), "d": (9,), "e": (1,)}, {},
         "f: tensor d is in W but not in C; 2 unexpected"),
    ]
    for got, optional, message in cases:
        with pytest.raises(ShapeMismatchError) as e:
            check_tensors(expected, got, "f", optional=optional, expected_from="C", got_from="W")
        assert str(e.value) == message


def test_truncated_safetensors_is_refused_before_reading(tmp_path):
    save_file({"a": torch.ones(100), "b": torch.ones(100)}, tmp_path / "t.safetensors")
    raw = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[:-10])
    with pytest.raises(UnreadableFileError, match=r"t.safetensors: tensor \w: its data offsets do not fit"):
        read_tensors(tmp_path / "t.safetensors")


def test_reading_a_tensor_does_not_read_the_others(tmp_path, monkeypatch):
    import mmmerge.io.reader as reader
    save_file({f"w{i}": torch.full((256,), float(i)) for i in range(8)}, tmp_path / "m.safetensors")
    reads = []
    real = reader._read_range
    monkeypatch.setattr(reader, "_read_range", lambda *a: reads.append(a[2]) or real(*a))
    lazy = read_tensors(tmp_path / "m.safetensors")
    assert torch.equal(lazy["w5"].load(), torch.full((256,), 5.0))
    assert reads == [256 * 4]


def test_mapped_tensors_are_private_copies_and_equal_safetensors_own_reader(tmp_path):
    want = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int16), "c": torch.randn(4).bfloat16(),
            "empty": torch.zeros(0, 3)}
    save_file(want, tmp_path / "m.safetensors")
    before = (tmp_path / "m.safetensors").read_bytes()
    got = {k: t.load() for k, t in read_tensors(tmp_path / "m.safetensors").items()}
    assert all(torch.equal(got[k], load_file(tmp_path / "m.safetensors")[k]) for k in want)
    got["a"].mul_(0)  # writable, and the write stays in this process
    assert (tmp_path / "m.safetensors").read_bytes() == before


def test_a_file_that_cannot_be_mapped_is_read_instead(tmp_path, monkeypatch):
    import mmap

    save_file({"a": torch.randn(50)}, tmp_path / "m.safetensors")
    lazy = read_tensors(tmp_path / "m.safetensors")

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")

    monkeypatch.setattr(mmap, "mmap", refuse)
    assert torch.equal(lazy["a"].load(), load_file(tmp_path / "m.safetensors")["a"])


def test_a_file_truncated_after_opening_names_the_file(tmp_path):
    save_file({"a": torch.ones(100), "b": torch.ones(100)}, tmp_path / "t.safetensors")
    lazy = read_tensors(tmp_path / "t.safetensors")
    raw = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[:-10])
    with pytest.raises(UnreadableFileError, match=r"t.safetensors: truncated"):
        lazy["b"].load()


def test_tensors_computed_into_the_files_mapped_pages_are_the_bytes_written_through_the_page_cache(tmp_path,
                                                                                                    monkeypatch):
    """Large output tensors are computed in place, in the output file's mapped pages (LazyTensor.fill), or copied
    there from load(); the files are byte for byte what the write path gives (small tensors computed into the
    writer's buffers), shards and index included."""
    from mmmerge.io import writer

    g = torch.Generator().manual_seed(0)
    values = {f"t{i}": torch.randn(3 + i, 5, generator=g).to(torch.bfloat16) for i in range(6)}
    filled = {}

    def lazy(name, v, *, fills):
        def fill(out):
            filled[name] = True
            out.copy_(v)
        return LazyTensor(tuple(v.shape), v.dtype, lambda: v, fill=fill if fills else None)

    tensors = {n: lazy(n, v, fills=i % 2 == 0) for i, (n, v) in enumerate(values.items())}
    (tmp_path / "page-cache").mkdir()
    (tmp_path / "mapped").mkdir()
    written = write_safetensors(tmp_path / "page-cache", tensors, max_shard_bytes=100)
    assert sorted(filled) == ["t0", "t2", "t4"]  # small ones too: into the writer's reused buffers
    filled.clear()
    monkeypatch.setattr(writer, "MAPPED_FROM", 0)
    assert write_safetensors(tmp_path / "mapped", tensors, max_shard_bytes=100) == written
    assert sorted(filled) == ["t0", "t2", "t4"]
    for name in written:
        assert (tmp_path / "mapped" / name).read_bytes() == (tmp_path / "page-cache" / name).read_bytes(), name
    assert len(written) > 2  # shards, and their index


def test_tensors_filled_into_reused_buffers_are_written_as_computed_while_a_write_is_slow(tmp_path, monkeypatch):
    """Small tensors are computed into two buffers in turn while the one before is written: a buffer is reused only
    after its write is done (here each write waits first, so reusing the buffer in flight would write the next
    tensor's values in its place)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import mmmerge.io.writer as writer

    class SlowWrites(ThreadPoolExecutor):
        def submit(self, fn, *args):
            return super().submit(lambda: (time.sleep(0.05), fn(*args))[1])

    monkeypatch.setattr(writer, "ThreadPoolExecutor", SlowWrites)
    values = {f"t{i}": torch.full((3 + i, 5), float(i), dtype=torch.bfloat16) for i in range(6)}
    tensors = {name: LazyTensor(tuple(v.shape), v.dtype, lambda v=v: v.clone(), fill=lambda out, v=v: out.copy_(v))
               for name, v in values.items()}
    write_safetensors(tmp_path, tensors)
    back = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(back[name], v) for name, v in values.items())
