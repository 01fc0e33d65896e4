"""Imported at start-up by every process the tests start (conftest.py puts this directory
first on their PYTHONPATH): makes `torch` unimportable there.

torch is a test-only dependency (the PyTorch parity reference), not one of sft_jax's, so an
installed sft_jax runs without it; transformers imports it whenever it is installed (its
config module does), which costs a command-line run several seconds of start-up. The path
finder is wrapped so that it finds no `torch`: `import torch` raises ModuleNotFoundError and
`importlib.util.find_spec("torch")` is None, as on a user's machine (a None in
sys.modules, the usual blocker, breaks libraries that look torch up there, e.g. scipy).
Processes that need torch (the benchmark's PyTorch worker) set their own PYTHONPATH.
"""

import sys
from importlib.machinery import PathFinder


class _PathFinderWithoutTorch(PathFinder):
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname == "torch" or fullname.startswith("torch."):
            return None
        return super().find_spec(fullname, path, target)


sys.meta_path[:] = [_PathFinderWithoutTorch if finder is PathFinder else finder
                    for finder in sys.meta_path]
