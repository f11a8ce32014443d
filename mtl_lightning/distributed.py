"""Fail fast under DDP: say which collective and which rank, and never outlive a SIGTERM.

Lightning's subprocess launcher (rank 0 is the launched process, ranks 1..N-1 its children)
SIGKILLs every rank within about 5 s when a child exits non-zero, and gloo fails a collective
at once when a peer's connection closes, but neither says which rank died. A collective that a
peer never joins waits for the process-group timeout, and a SIGTERM is handled only when the
main thread is back in Python, never while it waits in a collective. The pieces here, used by
:class:`~mtl_lightning.callbacks.fail_fast.FailFast`:

* :func:`describe_collective`: the collective a traceback or stack is in, and its caller;
* :func:`explain_failure`: a message naming this rank, the collective and the dead ranks;
* :class:`Watchdog`: a thread that ends this process ``grace`` seconds after a SIGTERM if it
  is still running, and a child rank soon after rank 0, its parent, died.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import lightning
import torch

_TORCH_DIR = str(Path(torch.__file__).parent)
_LIGHTNING_DIR = str(Path(lightning.__file__).parent)
_C10D = os.path.join("torch", "distributed", "distributed_c10d.py")
_DDP = os.path.join("torch", "nn", "parallel", "distributed.py")
_AUTOGRAD = os.path.join("torch", "autograd")
_PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe")
_TIMED_OUT = ("timed out", "timeout")
ORPHAN_GRACE_S = 2.0  # a child rank whose rank 0 died gets this long to fail by itself
DEBUG_HINT = (
    "TORCH_DISTRIBUTED_DEBUG=DETAIL makes torch check before every collective that all ranks "
    "call the same one (and report both), at the cost of an extra collective each time"
)


def say(rank: int, message: str) -> None:
    """Print ``[rank R] fail-fast: message`` to stderr at once (safe from any thread)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no usable stderr
        print(f"[rank {rank}] fail-fast: {message}", file=sys.stderr, flush=True)


def describe_collective(frames: Sequence[traceback.FrameSummary]) -> str | None:
    """The collective that ``frames`` (outermost first) are in and where it was called from.

    Example:
        >>> stack = [traceback.FrameSummary("/src/train.py", 7, "step"),
        ...          traceback.FrameSummary(f"/x/{_C10D}", 1, "all_reduce")]
        >>> describe_collective(stack)
        'all_reduce (called from /src/train.py:7 in step)'
        >>> describe_collective(stack[:1]) is None
        True
    """
    at = next((i for i, f in enumerate(frames) if f.filename.endswith(_C10D)), None)
    ddp = [i for i, f in enumerate(frames) if f.filename.endswith(_DDP)]
    if at is not None:
        name = frames[at].name
    elif ddp:  # DDP's own collectives (buffer broadcast, ...) call torch's C functions
        name, at = f"DDP's {frames[ddp[-1]].name}", ddp[0]
    elif any(_AUTOGRAD in f.filename for f in frames):
        name, at = "DDP's gradient all-reduce", len(frames)
    else:
        return None
    callers = [f for f in frames[:at] if not f.filename.startswith(_TORCH_DIR)]
    in_lightning = [f.filename.startswith(_LIGHTNING_DIR) for f in callers]
    # own code: a hook Lightning called (not the script that called Lightning), else any
    first = in_lightning.index(True) if any(in_lightning) else 0
    own = [f for f, lit in zip(callers[first:], in_lightning[first:], strict=True) if not lit]
    if not callers:
        return name
    direct, origin = callers[-1], (own or callers)[-1]
    where = f"called from {_where(origin)}"
    if direct is not origin:
        where = f"called from {_where(direct)}, from {_where(origin)}"
    return f"{name} ({where})"


def _where(frame: traceback.FrameSummary) -> str:
    path = frame.filename
    if path.startswith(_LIGHTNING_DIR):  # lightning/pytorch/...
        path = os.path.relpath(path, os.path.dirname(_LIGHTNING_DIR))
    return f"{path}:{frame.lineno} in {frame.name}"


def exit_reason(returncode: int) -> str:
    """``'killed by SIGKILL'`` for a negative return code, else ``'exited with code N'``.

    Example:
        >>> exit_reason(-9), exit_reason(1)
        ('killed by SIGKILL', 'exited with code 1')
    """
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def dead_ranks(children: Sequence[tuple[int, subprocess.Popen]], wait: float = 1.0) -> str:
    """``'rank 1 (pid 123) killed by SIGKILL'`` for each of the launcher's ``(rank, process)``
    ``children`` that has ended badly, waiting up to ``wait`` s for one to be reaped (a peer's
    closed connection can be seen before its exit status); ``''`` when none has."""
    deadline = time.monotonic() + wait
    while True:
        codes = [p.poll() for _, p in children]
        if any(codes) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return ", ".join(
        f"rank {rank} (pid {p.pid}) {exit_reason(code)}"
        for (rank, p), code in zip(children, codes, strict=True)
        if code
    )


def is_peer_gone(error: BaseException) -> bool:
    """Whether ``error`` says a peer's connection closed (gloo's words when a rank died)."""
    return any(s in str(error).lower() for s in _PEER_GONE)


def explain_failure(
    error: BaseException, rank: int, timeout_s: float | None, dead: str = ""
) -> str | None:
    """What ``error``, raised on ``rank`` by a collective, means; ``None`` when it was not
    raised by one. ``dead`` names the ranks known to have died.

    Example:
        >>> def barrier():
        ...     raise RuntimeError("Timed out waiting 10000ms for recv operation to complete")
        >>> barrier.__code__ = barrier.__code__.replace(co_filename=f"/x/{_C10D}")
        >>> try:
        ...     barrier()
        ... except RuntimeError as e:
        ...     message = explain_failure(e, 1, 10.0)
        >>> message.startswith("rank 1: collective barrier (called from <doctest")
        True
        >>> "timed out after 10 s" in message, explain_failure(ValueError(), 1, 10.0)
        (True, None)
    """
    if not isinstance(error, RuntimeError):
        return None
    where = describe_collective(traceback.extract_tb(error.__traceback__))
    if dead or is_peer_gone(error):
        what = f"collective {where}" if where else "a collective"
        if not dead:
            return f"rank {rank}: {what} failed: a peer rank died (rank 0 is the launched process)"
        return f"rank {rank}: {what} failed because a peer died: {dead}"
    if where is None or not any(s in str(error).lower() for s in _TIMED_OUT):
        return None
    if where.startswith(("init_process_group", "new_group")):
        return (
            f"rank {rank}: the start-up rendezvous {where} timed out: a rank did not join (it "
            "did not start, crashed first, or took longer to start than the timeout)"
        )
    after = f" after {timeout_s:g} s" if timeout_s is not None else ""
    return (
        f"rank {rank}: collective {where} timed out{after} (FailFast collective_timeout): "
        "another rank never joined it; it is stuck, or it called a different collective. "
        + DEBUG_HINT
    )


def main_thread_location() -> str:
    """Where the main thread is now, e.g. ``'in collective barrier (called from ...)'``."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    if frame is None:
        return "gone"
    frames = traceback.extract_stack(frame)
    collective = describe_collective(frames)
    if collective is not None:
        return f"in collective {collective}"
    last = frames[-1]
    return f"at {last.filename}:{last.lineno} in {last.name}"


class Watchdog:
    """End this process when it outlives a SIGTERM by ``grace`` seconds, or (a child rank,
    ``parent_pid`` given) its parent by :data:`ORPHAN_GRACE_S` seconds.

    Python runs signal handlers in the main thread, only between bytecodes: one waiting in a
    collective never gets there. The signal still reaches this thread, through
    :func:`signal.set_wakeup_fd` (written by the C-level handler whatever the main thread does);
    the handlers themselves (Lightning's) are left as they are. When the deadline passes, the
    main thread's location is printed, ``children`` (rank 0's ``(rank, process)`` pairs) are
    SIGKILLed and the process exits with 143 (128 + SIGTERM; 1 when orphaned) via
    :func:`os._exit`, also when the program caught the ``SIGTERMException`` and went on.
    SIGINT is left alone (an interactive interrupt that a notebook, say, survives).

    Signals are watched only if :meth:`start` runs in the main thread and nothing else owns the
    wakeup fd (an asyncio loop with signal handlers does); the parent is watched regardless.
    """

    def __init__(
        self,
        rank: int,
        grace: float,
        children: Sequence[tuple[int, subprocess.Popen]] = (),
        parent_pid: int | None = None,
    ) -> None:
        self.rank, self.grace, self.children, self.parent_pid = rank, grace, children, parent_pid
        self._stop = threading.Event()
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Watchdog:
        """Start watching (call from the main thread to watch signals)."""
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        try:
            previous: int | None = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main thread
            previous = None
        if previous == -1:
            self._sockets = (reader, writer)
        else:
            if previous is not None:  # someone else's: give it back
                signal.set_wakeup_fd(previous)
            reader.close()
            writer.close()
        self._thread = threading.Thread(target=self._run, name="fail-fast-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching and give the wakeup fd back (call from the main thread)."""
        self._stop.set()
        if self._sockets is not None:
            reader, writer = self._sockets
            if threading.current_thread() is threading.main_thread():
                current = signal.set_wakeup_fd(-1)
                if current != writer.fileno():  # replaced meanwhile: leave it
                    signal.set_wakeup_fd(current)
            writer.send(b"\0")  # wake the thread (0 is no signal)
        if self._thread is not None:
            self._thread.join()
        if self._sockets is not None:
            for sock in self._sockets:
                sock.close()
            self._sockets = None

    def _run(self) -> None:
        deadline: float | None = None
        code, reason = 1, ""
        readable = [self._sockets[0]] if self._sockets is not None else []
        while not self._stop.is_set():
            woken = select.select(readable, [], [], 0.5)[0]
            if woken and signal.SIGTERM in woken[0].recv(64) and deadline is None:
                deadline, code = time.monotonic() + self.grace, 128 + signal.SIGTERM
                reason = f"still running {self.grace:g} s after SIGTERM"
            if deadline is None and self.parent_pid is not None and os.getppid() != self.parent_pid:
                say(self.rank, f"rank 0 (pid {self.parent_pid}, the launcher) died")
                deadline = time.monotonic() + ORPHAN_GRACE_S
                reason = f"{ORPHAN_GRACE_S:g} s after rank 0 died"
            if deadline is not None and time.monotonic() >= deadline and not self._stop.is_set():
                self._exit(code, reason)

    def _exit(self, code: int, reason: str) -> None:
        alive = [(rank, p) for rank, p in self.children if p.poll() is None]
        for _, p in alive:
            p.kill()
        threading.Timer(2.0, os._exit, (code,)).start()  # even if stderr blocks
        kills = ", ".join(f"rank {rank} (pid {p.pid})" for rank, p in alive)
        say(
            self.rank,
            f"{reason}; its main thread is {main_thread_location()}; "
            + (f"killed {kills}; " if kills else "")
            + f"exiting with code {code}",
        )
        os._exit(code)
