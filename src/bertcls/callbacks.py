"""What the training loop tells as it goes: the `Callback` interface that `bertcls.train.train(..., callbacks=[...])` takes.

It lives apart from the loop so that modules the loop builds on (the experiment trackers, `bertcls.track`) can
implement it without importing the loop.
"""

from __future__ import annotations

from typing import Any

from bertcls.checkpoint import LoopState


class Callback:
    """What the loop tells as it goes. Subclass, override what you need, and pass instances to
    `train(..., callbacks=[...])`; every process calls them, so act on `main` alone where it matters.

    The order: `on_start` once, then `on_log` and `on_evaluate` as steps are logged and evaluated
    (per epoch, or every training.eval_every_steps), then `on_end` once. A resumed run calls
    `on_start` again and goes on from the checkpoint's step.
    """

    def on_start(self, job: Any) -> None:
        """Once, after the header line and before the first step: `job` is the run's `bertcls.train.Job`
        (its accelerator, loop state, log and run folder). To refuse to train, raise a BertclsError on
        every process alike, or the others wait for the one that stopped."""

    def on_log(self, record: dict[str, Any]) -> None:
        """After each logged step: step, epoch, loss, lr, examples_per_s."""

    def on_evaluate(self, state: LoopState, metrics: dict[str, Any]) -> bool:
        """After each validation pass (`state` already counts it); return True to stop training."""
        return False

    def on_end(self, result: dict[str, Any]) -> None:
        """Once, with what metrics.json holds, just before it is written."""
