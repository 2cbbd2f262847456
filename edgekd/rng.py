"""The global random generators a run or an export draws from, put back when it returns.

Training seeds torch's and numpy's global generators (edgekd.distill.trainer.seed_everything) so a run is
reproducible, and a model rebuilt from a checkpoint draws its initial weights before they are replaced, as
the exporters (torch.export, onnxscript, ai-edge-quantizer) draw from them and from Python's `random`.
Called from a notebook or a user's script, edgekd.run would otherwise leave the generators seeded with the
recipe's seed (every later `torch.randn` or `np.random.rand` of the caller repeating the same numbers), and
edgekd.export would shift the caller's seeded sequences.
"""

from __future__ import annotations

import contextlib
import random
import sys
from typing import Iterator


@contextlib.contextmanager
def kept_global_rngs() -> Iterator[None]:
    """Restore torch's, numpy's and Python's global generator states after the block (also when it raises).

    torch is not imported for this: if the block is what imports it, torch gets a fresh random seed at the
    end, as a process importing it would have.
    """
    import numpy as np

    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch = sys.modules.get("torch")
    torch_state = torch.random.get_rng_state() if torch is not None else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch = sys.modules.get("torch")
        if torch is not None and torch_state is not None:
            torch.random.set_rng_state(torch_state)
        elif torch is not None:
            torch.seed()
