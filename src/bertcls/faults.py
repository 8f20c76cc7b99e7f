"""Faults during training: SIGINT/SIGTERM become a clean stop after the current optimizer step (or,
after the last one, after the current stage of the final evaluation), and running out of memory
becomes a one-line hint instead of a stack trace."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from bertcls import distributed
from bertcls.config import TrainingConfig
from bertcls.errors import Interrupted, Terminated, TrainingError

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What the first signal's message says the loop does: `stopping_says` changes it (a search's trial is not resumed).
_AFTER_STEP: ContextVar[str] = ContextVar("after_step", default="after this step to write a resumable checkpoint")


@contextmanager
def stopping_says(when: str) -> Iterator[None]:
    """For the block, a first stop signal says the loop stops `when` (e.g. "after this step; ...")."""
    token = _AFTER_STEP.set(when)
    try:
        yield
    finally:
        _AFTER_STEP.reset(token)


class StopRequest:
    """Once armed (the loop has started), the first SIGINT/SIGTERM asks the loop to stop after the
    current optimizer step; a second one, or one before the loop, stops at once. It stays armed
    through the final evaluation (`finishing`), which then stops after its current stage.

    Under many processes (torchrun forwards its signal to every worker) the processes may see the
    signal at different steps; `agreed` makes them stop together, at the first step boundary
    where any of them has it.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.early: int | None = None  # a signal that came before the loop (see `arm`)
        self.armed = False
        self.finishing = False
        self.finished = False  # metrics.json is written: the run is whole, whatever comes
        self._previous: dict[int, object] = {}
        self._group = None
        self._shared = False
        self._agreed: int | None = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # Python only delivers signals there
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def arm(self) -> None:
        """The loop starts: from now on a signal stops it after its step. A signal that came before stops now if it has
        not already: Python drops an exception raised in a signal handler that ran inside a `__del__` (a tokenizer's
        or a regex's, while the run is set up), so the one `_handle` raised for it may never have arrived."""
        if self.early is not None:
            self._stop_at_once(self.early)
        self.armed = True

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def share(self, accelerator) -> None:
        """With many processes, make `agreed` a collective over them. It runs on the CPU (gloo), so
        it costs no GPU synchronisation: on NCCL it gets a gloo group of its own."""
        if accelerator.num_processes == 1:
            return
        import torch.distributed as dist

        self._shared = True
        self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    def agreed(self) -> bool:
        """Whether to stop now: whether any process got a signal. Under many processes every
        process must call this at the same points (once per optimizer step, once per epoch)."""
        if not self._shared:
            return self.requested
        import torch
        import torch.distributed as dist

        flag = torch.tensor([self.signum or 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)  # one int per step: cheap next to the gradients
        # Another process got it: stop with it, under its name. Not recorded as our own signal, so
        # that the same signal reaching us late (torchrun signals one worker after the other) is
        # not taken for a second one, which would stop at once, in the middle of the checkpoint.
        self._agreed = int(flag.item()) or None
        return self._agreed is not None

    def interrupted(self, step: int, checkpoint: Path) -> Interrupted:
        signum = self.signum or self._agreed
        return Interrupted(signal.Signals(signum).name, step, checkpoint, 128 + signum)

    def _handle(self, signum: int, frame) -> None:
        if self.finished:  # what is left (closing the trackers) ends by itself; a second signal ends it now, as finished
            if self.signum is not None:
                raise SystemExit(0)
            self.signum = signum
            if distributed.is_main_process():
                print(f"\n{signal.Signals(signum).name}: the run has finished; closing (press Ctrl-C again to exit now)",
                      file=sys.stderr, flush=True)
            return
        if self.armed and self.signum is None:
            self.signum = signum
            if distributed.is_main_process():  # under torchrun every process gets it: say it once
                when = ("after this stage of the final evaluation; the last checkpoint resumes into it" if self.finishing
                        else _AFTER_STEP.get())
                print(f"\n{signal.Signals(signum).name}: stopping {when} (press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
            return
        self.early = self.early or signum
        self._stop_at_once(signum)

    @staticmethod
    def _stop_at_once(signum: int) -> None:
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated


@contextmanager
def guarded(cfg: TrainingConfig) -> Iterator[StopRequest]:
    """Catch stop signals for the loop, and turn running out of memory, or another process of a launch gone in the
    middle of a collective, into a TrainingError."""
    import torch

    stop = StopRequest()
    stop.install()
    try:
        yield stop
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(out_of_memory_hint(cfg)) from None
    except RuntimeError as exc:
        if said := distributed.peer_gone(exc):  # one line instead of the collective layer's traceback
            raise TrainingError(f"the connection to another process of this launch broke ({said}): it stopped (its error, or "
                                "the launcher's report, says why) or the network between them failed; this one stopped too") from None
        if "out of memory" not in str(exc):  # older CUDA builds and MPS say it in a RuntimeError
            raise
        raise TrainingError(out_of_memory_hint(cfg)) from None
    finally:
        stop.uninstall()


def out_of_memory_hint(cfg: TrainingConfig) -> str:
    """Halve the micro-batch (or as near as divides it) and multiply accumulation to keep the effective batch."""
    size, accumulation = cfg.batch_size, cfg.gradient_accumulation_steps
    if size == 1:
        return "out of memory with training.batch_size=1; lower data.max_length or use a smaller model"
    factor = next(d for d in range(2, size + 1) if size % d == 0)
    return (f"out of memory with training.batch_size={size}; set training.batch_size={size // factor} and "
            f"training.gradient_accumulation_steps={accumulation * factor} (same effective batch of {size * accumulation}), "
            f"or lower training.eval_batch_size={cfg.eval_batch_size} if it happened while evaluating")
