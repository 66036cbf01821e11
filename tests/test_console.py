"""The `mmmerge` executable's entry (mmmerge/console.py): the command itself runs with the cyclic garbage
collector on, and the process exits with the command's code."""

import gc
import importlib.metadata
import weakref

import mmmerge.cli
from mmmerge import console


def test_the_installed_command_enters_through_console():
    entries = importlib.metadata.entry_points(group="console_scripts", name="mmmerge")
    assert [e.value for e in entries] == ["mmmerge.console:main"]


def test_the_command_runs_with_the_collector_on(monkeypatch):
    class Node:
        pass

    seen = {}

    def command():
        seen["enabled"] = gc.isenabled()
        node = Node()
        node.itself = node
        alive = weakref.ref(node)
        del node
        gc.collect()
        seen["cycle collected"] = alive() is None
        return 7

    monkeypatch.setattr(mmmerge.cli, "main", command)
    try:
        assert console.main() == 7
    finally:
        gc.unfreeze()
    assert seen == {"enabled": True, "cycle collected": True}
    assert gc.isenabled()
