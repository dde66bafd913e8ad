"""Read a run's checkpoints: ``adatune.checkpoint.load(path)``.

The public path of :mod:`adatune.running.checkpoint`, where the code lives:
``last.pt`` and ``best.pt`` hold plain tensors and data, read with
``torch.load(weights_only=True)`` (docs/reliability.md).
"""

from adatune.running.checkpoint import load

__all__ = ["load"]
