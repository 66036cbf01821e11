"""Writing an output whole or not at all, and one run at a time: Ctrl-C and SIGTERM in the middle of a merge, two
runs on one output, a run killed outright and the next run after it, a folder appearing before the final rename,
a full disk and a read-only one. Each leaves nothing behind but what a user had, and says so in one line.

The merges that must be caught in the middle are real `mmmerge merge` processes made slow on purpose: karcher with a
huge iteration count and a tolerance it never reaches spends seconds per tiny tensor, inside the temporary folder.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from mmmerge.errors import OutputExistsError
from mmmerge.io import atomic_output_dir
from cli_run import one_line_error, run
from tiny_world import build_world, snapshot


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def slow_recipe(world, tmp_path_factory):
    path = tmp_path_factory.mktemp("recipes") / "slow.yml"
    path.write_text(yaml.safe_dump({"merge_method": "karcher", "models": [{"model": str(world["lm"])},
                                                                           {"model": str(world["ft"])}],
                                    "parameters": {"max_iter": 10**7, "tol": 1e-30}}))
    return path


def start(recipe, out):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-m", "mmmerge", "merge", str(recipe), "--out", str(out), "--quiet",
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def temps(out):
    return sorted(out.parent.glob(f".{out.name}.tmp-*"))


def wait_until_writing(proc, out, timeout=120):
    """Wait for the run's temporary folder: the merge is then under way (and will run for minutes)."""
    end = time.monotonic() + timeout
    while not temps(out):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < end, "the merge never started writing"
        time.sleep(0.05)


def finish(proc, code):
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("sig, code, line", [(signal.SIGTERM, 143, "error: terminated (SIGTERM)"),
                                             (signal.SIGINT, 130, "error: interrupted (SIGINT)")])
def test_a_signal_mid_merge_removes_the_temporary_folder(slow_recipe, tmp_path, sig, code, line):
    out = tmp_path / "out"
    proc = start(slow_recipe, out)
    wait_until_writing(proc, out)
    proc.send_signal(sig)
    assert finish(proc, code).startswith(line)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder, no lock file


def test_a_second_run_on_the_same_output_is_refused_at_once(world, slow_recipe, tmp_path):
    out = tmp_path / "out"
    first = start(slow_recipe, out)
    wait_until_writing(first, out)
    second = run("merge", world["recipe"], "--out", out, "--quiet", "--force")
    assert first.poll() is None  # refused while the first still runs: it did not wait for it
    one_line_error(second, str(out), "another mmmerge run", f"pid {first.pid}")
    first.send_signal(signal.SIGTERM)
    finish(first, 143)
    assert list(tmp_path.iterdir()) == []
    assert run("merge", world["recipe"], "--out", out, "--quiet").returncode == 0  # the lock went with the run


def test_a_killed_run_is_cleaned_up_by_the_next(world, slow_recipe, tmp_path):
    out = tmp_path / "out"
    proc = start(slow_recipe, out)
    wait_until_writing(proc, out)
    proc.kill()  # SIGKILL: no cleanup can run
    proc.communicate()
    left = temps(out)
    assert len(left) == 1 and not out.exists()
    r = run("merge", world["recipe"], "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert f"note: removed {left[0]}, the unfinished output of a run that was stopped" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_output_whose_replacement_was_cut_off_is_put_back(world, tmp_path):
    out = tmp_path / "out"
    assert run("merge", world["recipe"], "--out", out, "--quiet").returncode == 0
    before = snapshot(out)
    out.rename(tmp_path / ".out.old-abcd1234")  # killed between moving the old output away and the new one in
    (tmp_path / ".out.tmp-abcd1234").mkdir()
    r = run("merge", world["recipe"], "--out", out, "--quiet")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    back, removed, error = r.stderr.splitlines()  # the old output is back, so the run stops as it did before
    assert back.startswith(f"note: put back {out} from .out.old-abcd1234")
    assert removed.startswith(f"note: removed {tmp_path / '.out.tmp-abcd1234'}") and "not empty" in error
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_final_rename_never_replaces_a_folder_that_appeared(tmp_path):
    for appears in ({"theirs.txt": "not mine"}, {}):  # a full folder, and an empty one (os.rename would take that)
        out = tmp_path / "out"
        with pytest.raises(OutputExistsError, match="was created there while this run was writing"):
            with atomic_output_dir(out) as tmp:
                (tmp / "model.safetensors").write_text("mine")
                out.mkdir()
                for name, text in appears.items():
                    (out / name).write_text(text)
        assert snapshot(out) == {k: v.encode() for k, v in appears.items()}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
        shutil.rmtree(out)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 KiB tmpfs: too small for any model. Needs mount rights (root); skipped elsewhere."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8); the disk-full path is not exercised here")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"this machine does not allow mounting a tmpfs ({r.stderr.strip()}); disk-full path not exercised")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_and_a_read_only_one_are_one_line_and_leave_nothing(world, small_disk):
    r = run("merge", world["recipe"], "--out", small_disk / "out", "--quiet")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: {small_disk / 'out'}: no space left on the device"), r.stderr
    assert list(small_disk.iterdir()) == []
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    r = run("merge", world["recipe"], "--out", small_disk / "out", "--quiet")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "the file system is read-only; write the output elsewhere" in r.stderr
    assert list(small_disk.iterdir()) == []
