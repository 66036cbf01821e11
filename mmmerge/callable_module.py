"""A module that can be called as the function it is named after.

`mmmerge.stitch(...)` is the public function, and `mmmerge/stitch.py` the module that defines it. Once anything
imports the module (the CLI does), Python binds `mmmerge.stitch` to the module, hiding the function the package
would otherwise hand out; calling it then failed with "'module' object is not callable". Such a module calls its
function instead.
"""

from __future__ import annotations

import sys
import types


def make_callable(module_name: str, function_name: str) -> None:
    """Make the module `module_name` call its own `function_name` when it is called."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, function_name)(*args, **kwargs)

    sys.modules[module_name].__class__ = CallableModule
