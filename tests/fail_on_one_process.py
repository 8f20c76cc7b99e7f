"""Run `bertcls ARGS` under a launcher, with the second process out of memory at its third optimizer step, as one GPU
of a launch runs out while the other processes go on to wait for it in the next step's all-reduce."""

import os
import sys

import torch

from bertcls.cli import main


def out_of_memory_at_the_third_step() -> None:
    step, calls = torch.optim.AdamW.step, []

    def patched(self, *args, **kwargs):
        calls.append(None)
        if len(calls) == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return step(self, *args, **kwargs)

    torch.optim.AdamW.step = patched


if __name__ == "__main__":
    if os.environ.get("LOCAL_RANK") == "1":
        out_of_memory_at_the_third_step()
    sys.argv[0] = "bertcls"
    main()
