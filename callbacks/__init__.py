"""The short import name of ``lit_grok.callbacks``: importing ``callbacks`` gives that same package and modules.

The callbacks' code lives in this folder; ``lit_grok.callbacks`` (the name to use inside other projects, where a
``callbacks.py`` may shadow this one) loads it, and this shim aliases ``callbacks`` and ``callbacks.*`` to it.
"""
import importlib
import importlib.abc
import importlib.util
import sys

REAL = "lit_grok.callbacks"


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``callbacks.X`` to the module ``lit_grok.callbacks.X`` itself, so no module loads twice."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(REAL + spec.name[len(__name__) :])

    def exec_module(self, module):
        pass


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.insert(0, _Alias())
sys.modules[__name__] = importlib.import_module(REAL)
