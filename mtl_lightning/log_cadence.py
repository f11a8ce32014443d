"""When Lightning's loggers write a training step's values, so that values logged only for the
logger are computed and handed to ``self.log`` on those steps alone.

Every ``self.log`` call costs Lightning a few hundred microseconds of bookkeeping (it moves the
stored result to the value's device and copies its metadata), which on a small model is a
percent of a step per call. Lightning writes step values when ``step % log_every_n_steps == 0``
(``step``: optimizer steps done once this batch has stepped), when the trainer is stopping, and
on every step of ``fast_dev_run``; a value logged on any other step is only overwritten.
"""

from __future__ import annotations

from typing import Any

__all__ = ["logger_writes_step"]


def logger_writes_step(trainer: Any, step: int) -> bool:
    """Whether the loggers write the step values of the batch that ends optimizer step ``step``
    (1-based: ``trainer.global_step + 1`` before the batch's optimizer step).

    The rule of Lightning's logger connector (``should_update_logs``), from public trainer
    attributes. A stop requested later in the same batch (``Timer``, a callback's
    ``on_train_batch_end``) also triggers a write, which this cannot foresee.

    Example:
        >>> from types import SimpleNamespace
        >>> trainer = SimpleNamespace(log_every_n_steps=50, should_stop=False, fast_dev_run=False)
        >>> [s for s in range(1, 151) if logger_writes_step(trainer, s)]
        [50, 100, 150]
        >>> logger_writes_step(SimpleNamespace(log_every_n_steps=0, should_stop=True,
        ...                                    fast_dev_run=False), 50)
        False
    """
    if trainer.fast_dev_run:
        return True
    every = int(trainer.log_every_n_steps)
    if every <= 0:
        return False
    return step % every == 0 or bool(trainer.should_stop)
