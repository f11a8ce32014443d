"""`FailFast`: a DDP run that loses a rank, hangs in a collective or gets SIGTERM ends promptly.

What Lightning 2.6 does under its subprocess launcher (rank 0 is the launched process, the
other ranks its children), and what this callback adds (with :mod:`mtl_lightning.distributed`):

* **A rank dies.** Lightning: gloo fails the peers' pending or next collective ("Connection
  closed by peer", no rank named) and rank 0's ``_ChildProcessObserver`` SIGKILLs every rank
  within 5 s of a child's non-zero exit. Added: the error names the dead rank (rank 0 reads its
  children's exit status, a child sees its parent gone), and a child whose rank 0 died exits
  2 s later even if it never calls another collective.
* **A collective nobody joins.** Lightning: it waits for the process-group timeout (30 min).
  Added: ``python -m mtl_lightning`` sets ``collective_timeout``, 300 s by default (well above
  any legitimate wait here: a step, a checkpoint write, rank 0's probe fit; and six times
  sooner), on a DDP strategy named by string (``ddp``, ``auto``, ...; a strategy object keeps
  its own). The start-up rendezvous keeps at least 300 s (a child rank imports and builds
  everything before it joins); the timeout is lowered once the ranks are set up. The error
  names the rank, the collective and its caller.
* **SIGTERM.** Lightning: rank 0 forwards it to its children and every rank stops at a
  training step (``SIGTERMException``), exit status 0. But Python runs a signal handler only
  when the main thread is back in Python, never while it waits in a collective; and
  Lightning's handler broadcasts from wherever the main thread is, which can meet another
  collective on a peer (gloo aborts, "Received data size doesn't match expected size", or
  waits). Added, under DDP: the ranks agree on the stop after each training batch instead
  (:class:`SigtermSync`), and a watchdog thread ends a process still running
  ``sigterm_grace`` s after SIGTERM (rank 0 SIGKILLs its children then). Everywhere: the
  launched process exits 143 (128 + SIGTERM), not 0, and ``last-sigterm.ckpt`` is saved
  next to ``last.ckpt``, so ``--ckpt_path last`` resumes from it. Saving is collective (the
  module all-reduces in ``on_save_checkpoint``), so the ranks first compare epoch, step and
  batch counters, with a short timeout. If they differ, a rank does not answer, or the stop
  came outside a training step (in validation), nothing is saved and the run exits at once:
  ``--ckpt_path last`` then resumes from the last checkpoint saved before.

Under SLURM with auto-requeue (Lightning requeues on SIGUSR1 and bypasses SIGTERM) the SIGTERM
part is off. Raise ``collective_timeout`` for rank-0-only work longer than it (e.g.
:class:`~mtl_lightning.callbacks.LeakageProbe` on a large corpus), ``sigterm_grace`` for
checkpoints slower to write than it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, Strategy
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mtl_lightning.distributed import Watchdog, dead_ranks, explain_failure, is_peer_gone, say

DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0
DEFAULT_SIGTERM_GRACE_S = 15.0
# the start-up rendezvous waits at least this long: rank 0 waits there for a child rank that
# still has to import and build everything (tens of seconds on a loaded machine)
RENDEZVOUS_TIMEOUT_S = 300.0
_set_pg_timeout = (
    getattr(dist.distributed_c10d, "_set_pg_timeout", None) if dist.is_available() else None
)
SIGTERM_CHECKPOINT = ModelCheckpoint.CHECKPOINT_NAME_LAST + "-sigterm"


class FailFast(pl.Callback):
    """End a DDP run promptly, with a message naming the rank, when it cannot go on.

    See the module docstring for what Lightning already does and what this adds.
    ``python -m mtl_lightning`` adds one with the defaults unless the config has one. In a
    single process only the SIGTERM checkpoint and exit status apply.

    Args:
        collective_timeout: Seconds a collective may wait for the other ranks (the process
            group timeout, set by :meth:`apply_timeout`; the start-up rendezvous keeps at least
            :data:`RENDEZVOUS_TIMEOUT_S`).
        sigterm_grace: Seconds a process may keep running after SIGTERM before it is ended
            (rank 0 with its child ranks).
        checkpoint_on_sigterm: Save ``last-sigterm.ckpt`` when SIGTERM stops training.

    Example (config)::

        trainer:
          callbacks:
            - class_path: mtl_lightning.callbacks.fail_fast.FailFast
              init_args: {collective_timeout: 900, sigterm_grace: 30}

    Example:
        >>> FailFast(collective_timeout=60).apply_timeout(DDPStrategy(), configured="ddp")
        True
        >>> FailFast().apply_timeout(DDPStrategy(), configured=DDPStrategy())  # user's own
        False
    """

    def __init__(
        self,
        collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT_S,
        sigterm_grace: float = DEFAULT_SIGTERM_GRACE_S,
        checkpoint_on_sigterm: bool = True,
    ) -> None:
        if collective_timeout <= 0 or sigterm_grace <= 0:
            raise ValueError(
                f"collective_timeout and sigterm_grace must be > 0 s, got "
                f"{collective_timeout} and {sigterm_grace}"
            )
        self.collective_timeout = collective_timeout
        self.sigterm_grace = sigterm_grace
        self.checkpoint_on_sigterm = checkpoint_on_sigterm
        self._watchdog: Watchdog | None = None
        self._sync: SigtermSync | None = None
        self._parent_pid: int | None = None
        self._applied = False  # whether apply_timeout set the strategy's timeout

    @property
    def _agree_timeout(self) -> float:
        return min(10.0, self.sigterm_grace / 3)

    def apply_timeout(self, strategy: Strategy, configured: Any = None) -> bool:
        """Give ``strategy`` (before ``fit``) ``collective_timeout``, unless it is not DDP or the
        ``configured`` trainer argument is a strategy object (the user's, timeout included)."""
        if isinstance(configured, Strategy) or not isinstance(strategy, DDPStrategy):
            return False
        if not hasattr(strategy, "_timeout"):  # pragma: no cover - another Lightning version
            return False
        seconds = self.collective_timeout
        if _set_pg_timeout is not None:  # lowered to collective_timeout once set up
            seconds = max(seconds, RENDEZVOUS_TIMEOUT_S)
        strategy._timeout = timedelta(seconds=seconds)
        self._applied = True
        return True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.teardown(trainer, pl_module, stage)  # a callback reused by another fit
        if not (trainer.world_size > 1 and dist.is_available() and dist.is_initialized()):
            return  # one process: no collective to hang in, nothing to watch
        if self._applied and _set_pg_timeout is not None:
            _set_pg_timeout(timedelta(seconds=self.collective_timeout))
        if _slurm_requeue(trainer):
            return
        self._parent_pid = os.getppid() if trainer.local_rank > 0 else None
        self._watchdog = Watchdog(
            trainer.global_rank, self.sigterm_grace, _children(trainer), self._parent_pid
        ).start()
        if stage == "fit":  # every rank runs setup, in the same order: new_group is collective
            self._sync = SigtermSync(trainer, timedelta(seconds=self.collective_timeout))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # only after a normal end: on an exception the watchdog stays, to bound the exit
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if self._sync is not None:
            self._sync.after_batch(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            self._on_sigterm(trainer, exception)
        else:
            self._explain(trainer, exception)

    # ------------------------------------------------------------------ a failed collective
    def _explain(self, trainer: pl.Trainer, exception: BaseException) -> None:
        """Print and append to ``exception``'s message what the failed collective means."""
        dead = dead_ranks(_children(trainer), wait=1.0 if is_peer_gone(exception) else 0.0)
        if not dead and self._parent_pid is not None and os.getppid() != self._parent_pid:
            dead = f"rank 0 (pid {self._parent_pid}, the launcher)"
        timeout = getattr(trainer.strategy, "_timeout", None)
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else None
        seconds = self.collective_timeout if self._applied else seconds
        message = explain_failure(exception, trainer.global_rank, seconds, dead)
        if message is None:
            return
        say(trainer.global_rank, message)
        if exception.args and isinstance(exception.args[0], str):
            exception.args = (f"{exception.args[0]}\n{message}", *exception.args[1:])

    # ------------------------------------------------------------------ SIGTERM
    def _on_sigterm(self, trainer: pl.Trainer, exception: SIGTERMException) -> None:
        if _slurm_requeue(trainer):
            return
        if trainer.local_rank == 0:  # the launched process: the run's exit status
            exception.code = 128 + signal.SIGTERM
        path = _sigterm_path(trainer) if self.checkpoint_on_sigterm else None
        if path is None:
            return
        rank = trainer.global_rank
        if not trainer.training or trainer.sanity_checking:
            if trainer.is_global_zero:
                say(
                    rank,
                    "SIGTERM outside a training step: exiting without a checkpoint; "
                    "--ckpt_path last resumes from the last one saved",
                )
            return
        if not self._ranks_agree(trainer):
            return
        try:
            trainer.save_checkpoint(path)
        except Exception as error:  # a rank died or timed out meanwhile: exit anyway
            say(rank, f"SIGTERM: saving {path} failed ({error}); exiting without it")
            return
        if trainer.is_global_zero:
            say(
                rank,
                f"SIGTERM: saved {path} (epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}); resume with --ckpt_path last",
            )

    def _ranks_agree(self, trainer: pl.Trainer) -> bool:
        """Whether every rank stopped at the same point (so all can save together)."""
        if trainer.world_size == 1:
            return True
        if self._sync is None:
            return False
        rank = trainer.global_rank
        try:
            points = self._sync.points(trainer, timedelta(seconds=self._agree_timeout))
        except Exception as error:  # a rank is stuck in a collective, or gone
            say(
                rank,
                f"SIGTERM: not every rank reached the checkpoint within "
                f"{self._agree_timeout:g} s ({str(error).splitlines()[0]}); exiting without one",
            )
            return False
        if all(p == points[rank] for p in points):
            return True
        if trainer.is_global_zero:
            where = "; ".join(f"rank {r}: epoch {p[0]}, step {p[1]}" for r, p in enumerate(points))
            say(
                rank,
                f"SIGTERM: the ranks stopped at different points ({where}); a checkpoint "
                "would deadlock, exiting without one",
            )
        return False


class SigtermSync:
    """Stop every DDP rank at the end of the same training step on SIGTERM.

    Lightning's SIGTERM notifier broadcasts inside the signal handler, that is wherever the
    main thread happens to be, so the broadcast can meet another collective on a peer: gloo
    then aborts ("Received data size doesn't match expected size") or waits forever. Here the
    notifier of this trainer's signal connector (an instance attribute; Lightning's SLURM
    handlers and the SIGTERM handlers it chains stay) forwards the signal to the child ranks
    and marks it, without a collective. After every training batch the ranks all-reduce the
    mark over their own gloo group, asynchronously (read one batch later, so the step does not
    wait for it), and, if any rank had it, all set ``received_sigterm``: Lightning raises
    ``SIGTERMException`` on every rank at the end of the same step (after an epoch's last
    batch: at the end of the next epoch's first, so that validation and the epoch-end
    checkpoints run first).
    """

    def __init__(self, trainer: pl.Trainer, timeout: timedelta) -> None:
        self.group = dist.new_group(backend="gloo", timeout=timeout)
        self.pending = False
        self._trainer = trainer
        self._flag, self._work = torch.zeros(1, dtype=torch.int64), None
        connector = trainer._signal_connector
        self._replaced = hasattr(type(connector), "_sigterm_notifier_fn")
        if self._replaced:  # read by Lightning's register_signal_handlers, after setup
            connector._sigterm_notifier_fn = self._note  # type: ignore[method-assign]

    def close(self) -> None:
        """Finish the last all-reduce; give the signal connector its own notifier back."""
        if self._work is not None:
            with contextlib.suppress(Exception):
                self._work.wait(timedelta(seconds=10))
        self._trainer._signal_connector.__dict__.pop("_sigterm_notifier_fn", None)

    def _note(self, signum: Any, frame: Any) -> None:
        # no printing here: the handler may interrupt a write to the same stream
        launcher = self._trainer.strategy.launcher
        if not self.pending and launcher is not None:
            launcher.kill(signum)  # to the child ranks, as Lightning does
        self.pending = True

    def after_batch(self, trainer: pl.Trainer) -> None:
        """Read the last batch's all-reduced mark and start this one's; on a mark, set
        ``received_sigterm`` on every rank (unless this is an epoch's last batch)."""
        if not self._replaced:
            return
        marked = False
        if self._work is not None:
            self._work.wait()
            marked = bool(self._flag.item())
        self._flag = torch.tensor([int(self.pending or marked)])
        self._work = dist.all_reduce(self._flag, dist.ReduceOp.MAX, self.group, async_op=True)
        batches = trainer.fit_loop.epoch_loop.batch_progress
        last = batches.is_last_batch or 0 <= trainer.max_steps <= trainer.global_step
        if not marked or last:  # Lightning would stop in the validation: let the epoch end
            return
        trainer._signal_connector.received_sigterm = True
        if trainer.is_global_zero:
            say(0, f"SIGTERM: every rank stops at the end of step {trainer.global_step}")

    def points(self, trainer: pl.Trainer, timeout: timedelta) -> list[list[int]]:
        """Every rank's ``[epoch, global step, batches ready, batches completed]``."""
        batches = trainer.fit_loop.epoch_loop.batch_progress.total
        here = torch.tensor(
            [trainer.current_epoch, trainer.global_step, batches.ready, batches.completed]
        )
        points = [torch.empty_like(here) for _ in range(trainer.world_size)]
        dist.all_gather(points, here, group=self.group, async_op=True).wait(timeout)
        return [p.tolist() for p in points]


def ensure_fail_fast(callbacks: list[pl.Callback]) -> FailFast:
    """The :class:`FailFast` among ``callbacks``, or a default one appended to them."""
    found = next((c for c in callbacks if isinstance(c, FailFast)), None)
    if found is None:
        found = FailFast()
        callbacks.append(found)
    return found


def _slurm_requeue(trainer: pl.Trainer) -> bool:
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return isinstance(environment, SLURMEnvironment) and environment.auto_requeue


def _children(trainer: pl.Trainer) -> list[tuple[int, Any]]:
    """``(global rank, process)`` of the ranks this process launched (rank 0's children)."""
    procs = getattr(trainer.strategy.launcher, "procs", None) or []
    return [(trainer.global_rank + 1 + i, p) for i, p in enumerate(procs)]


def _sigterm_path(trainer: pl.Trainer) -> str | None:
    """``last-sigterm.ckpt`` in the directory of the ``save_last`` ModelCheckpoint (else the
    first ModelCheckpoint); ``None`` without one (checkpointing off)."""
    found = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    found = [c for c in found if c.dirpath]
    if not found:
        return None
    chosen = next((c for c in found if c.save_last), found[0])
    return os.path.join(str(chosen.dirpath), SIGTERM_CHECKPOINT + chosen.FILE_EXTENSION)
