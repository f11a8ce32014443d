"""What the commands print: Lightning's and PyTorch's noise filtered, real warnings kept."""

from __future__ import annotations

import logging
import warnings

#: the program name in usage lines (argparse would say ``__main__.py``)
PROG = "python -m mtl_lightning"

__all__ = ["PROG", "quiet_library_noise"]

#: rank_zero_info's advertisement for a hosted logger, printed by every Trainer
_TIP = "💡 Tip:"


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_TIP)


def quiet_library_noise(subcommand: str | None) -> None:
    """Filter messages that say nothing about the user's run.

    - Lightning's "💡 Tip: ... litlogger" advertisement;
    - the ``isinstance(treespec, LeafSpec)`` deprecation that Lightning's own pytree helper
      triggers in PyTorch (not the user's code);
    - for ``validate``/``test``/``predict`` only: "The dirpath has changed", which every
      evaluation of a checkpoint prints because it logs to a new run directory by design.

    Example:
        >>> quiet_library_noise("test")
        >>> logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        >>> any(isinstance(f, _DropTip) for f in logger.filters)
        True
    """
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTip) for f in logger.filters):
            logger.addFilter(_DropTip())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    if subcommand in ("validate", "test", "predict"):
        warnings.filterwarnings("ignore", message=r"The dirpath has changed from .*")
