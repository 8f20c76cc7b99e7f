"""Run `bertcls train CONFIG [KEY=VALUE ...]` with FSDP2 on CPU processes (under torchrun).

Accelerate only enables FSDP for GPU process groups and bertcls refuses `training.fsdp` on the
CPU, so this switches Accelerate's state to FSDP by hand after the process group is up. The
sharding itself is real (PyTorch FSDP2 over gloo): it exercises bertcls's FSDP code path
(shard units, full-state save, broadcast load into shards, evaluation) where no GPU is at hand.
"""

import sys

from accelerate.utils import DistributedType

import bertcls.train as train_mod
from bertcls.config import load_config
from bertcls.distributed import fsdp_plugin

make_accelerator = train_mod.make_accelerator


def make_fsdp_accelerator_on_cpu(cfg, log_with=None):
    accelerator = make_accelerator(cfg.model_copy(update={"fsdp": False}), log_with)
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = fsdp_plugin(cfg)
    return accelerator


if __name__ == "__main__":
    train_mod.make_accelerator = make_fsdp_accelerator_on_cpu
    config = load_config(sys.argv[1], [*sys.argv[2:], "training.fsdp=true"])
    train_mod.train(config, quiet=True)
