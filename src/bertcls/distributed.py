"""Many processes: the launcher's environment in; FSDP settings, and the best checkpoint's weights
saved from and loaded back into a (possibly sharded) model, out.

`torchrun` and `accelerate launch` start one process per device and describe the group in
environment variables (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); Accelerate reads
them. Only the main process (global rank 0) writes the run folder, so a multi-machine run needs
no shared filesystem, except to resume: every process reads the checkpoint (`bertcls.checkpoint`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bertcls.errors import BertclsError, ConfigError, StoppedWithAnother, Terminated

if TYPE_CHECKING:  # pydantic stays off the `--help` and predict paths
    from bertcls.config import TrainingConfig

T = TypeVar("T")


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started this process: they set LOCAL_RANK, as Accelerate reads
    it. RANK and WORLD_SIZE alone (a job's pods set them for every command) make no launch."""
    return "LOCAL_RANK" in os.environ


def launched_processes() -> int:
    """How many processes the launcher started (1 when run plainly), known before any setup."""
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def is_main_process() -> bool:
    """Whether this is the main process (global rank 0, or not launched), known before any setup."""
    return not launched() or os.environ.get("RANK", "0") == "0"


def local_follower() -> bool:
    """Whether a launcher started this process besides the first on its machine (local rank 1 or more): its output
    repeats the first one's, on the same terminal."""
    return launched() and os.environ["LOCAL_RANK"] != "0"


# How the collective layer says that its connection to another process of the launch broke in the middle of a
# collective: gloo's TCP pair, and NCCL's remote error (which a network fault between live processes raises too)
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote process exited or there was a network error")


def peer_gone(exc: BaseException) -> str | None:
    """What the collective layer said (one of PEER_GONE) where `exc` is its connection to another process of this launch
    breaking while this one waited in a collective: that process failed (and said why) or was killed, or the network
    between them failed. None for anything else, and when this process is the launch's only one."""
    if not isinstance(exc, RuntimeError) or launched_processes() < 2:
        return None
    return next((text for text in PEER_GONE if text in str(exc)), None)


def is_sharded(accelerator) -> bool:
    """Whether the model is sharded across processes (FSDP)."""
    return accelerator.distributed_type == "FSDP"


def from_main(value, accelerator):
    """The main process's `value`, on every process."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def on_main(accelerator, write: Callable[[], T]) -> T:
    """Run `write` (files into the run folder) on the main process alone while the others wait for it, and return its
    result on every process. When it fails (a full disk, a second Ctrl-C), every process stops with it: the others
    raise StoppedWithAnother (or the same interrupt) rather than wait at a barrier the main process never reaches, for
    the collective layer's traceback or timeout."""
    failure: BaseException | None = None
    result = None
    if accelerator.is_main_process:
        try:
            result = write()
        except BaseException as exc:
            failure = exc
    if accelerator.num_processes > 1:  # a collective: every process waits here for the main one's outcome
        kind, value = from_main(("ok", result) if failure is None else (type(failure).__name__, str(failure)), accelerator)
        if failure is None:
            if kind == "Terminated":
                raise Terminated
            if kind == "KeyboardInterrupt":
                raise KeyboardInterrupt
            if kind != "ok":
                raise StoppedWithAnother(f"the main process stopped: {value}")
            result = value
    if failure is not None:
        raise failure
    return result


def together(accelerator, load: Callable[[], T]) -> T:
    """Run `load` on every process (each reading its own part of a checkpoint, say). When it fails on any, every
    process stops: that one with its error, the others with StoppedWithAnother, rather than wait at the next
    collective for the collective layer's traceback (gloo's 'Connection closed by peer') or timeout (NCCL). Where
    several fail alike (a damaged file they all read), the first of them says it."""
    failure: BaseException | None = None
    try:
        result = load()
    except BaseException as exc:
        failure = exc
    if accelerator.num_processes > 1:  # a collective: every process says how it failed, if it did
        from accelerate.utils import gather_object

        said = gather_object([f"{type(failure).__name__}: {failure}" if isinstance(failure, BertclsError) else failure is not None])
        if failure is None and any(said):
            raise StoppedWithAnother("another process stopped")
        if isinstance(failure, BertclsError) and said.index(said[accelerator.process_index]) < accelerator.process_index:
            raise StoppedWithAnother(str(failure))  # a file they all read: an earlier process says the same
    if failure is not None:
        raise failure
    return result


def check_launch(cfg: TrainingConfig, on_cpu: bool, processes: int) -> None:
    """Refuse settings that cannot work with this launch, before the process group is set up."""
    if processes > 1 and cfg.device.startswith("cuda:"):
        raise ConfigError(f"training.device: {cfg.device} pins one GPU, but {processes} processes were launched and each "
                          "takes its own GPU (LOCAL_RANK); use auto or cuda, and choose GPUs with CUDA_VISIBLE_DEVICES")
    if cfg.fsdp and on_cpu:
        raise ConfigError("training.fsdp: sharding needs CUDA GPUs (Accelerate runs CPU processes as plain data "
                          "parallel); set training.fsdp: false on the CPU")
    if cfg.fsdp and processes < 2:
        raise ConfigError("training.fsdp: shards the model across processes, but this is one process; launch with "
                          "`torchrun --nproc_per_node N -m bertcls train ...` (N >= 2) or set training.fsdp: false")


def fsdp_plugin(cfg: TrainingConfig):
    """FSDP2 (per-parameter sharding): each transformer layer is its own shard unit, weights are
    gathered for a layer's forward/backward and freed after; the saved checkpoint is a full one."""
    if not cfg.fsdp:
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin

    # transformer_based_wrap with no class names: Accelerate wraps the model's `_no_split_modules`
    # (BertLayer, RobertaLayer, ...), the unit that transformers itself never splits.
    return FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                          reshard_after_forward=True, state_dict_type="FULL_STATE_DICT")


def set_shard_units(accelerator, model) -> None:
    """Under FSDP, shard the model layer by layer: its `_no_split_modules` (BertLayer, ...) minus
    the embeddings, which Accelerate shards on their own (transformers lists BertEmbeddings too,
    and sharding the word embeddings a second time fails). Call before `prepare`."""
    if accelerator.distributed_type != "FSDP":
        return
    names = [name for name in getattr(model, "_no_split_modules", None) or [] if not name.endswith("Embeddings")]
    accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = names


def full_state_dict(accelerator, model) -> dict:
    """The whole model's weights, complete on the main process. Under FSDP this is a collective:
    every process must call it, and at the same point."""
    if _is_fsdp2(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True))
    return accelerator.get_state_dict(model)  # DDP, one process, or FSDP1 from an `accelerate launch --use_fsdp` config


def load_full_state(accelerator, model, folder: Path) -> None:
    """Load the weights the main process saved in `folder` into every process's model.

    Only the main process reads the file; the others receive the weights from it, so no shared
    filesystem is needed, and a sharded (FSDP) model gets just its own shards.
    """
    from safetensors.torch import load_file

    state = load_file(Path(folder) / "model.safetensors") if accelerator.is_main_process else {}
    if accelerator.num_processes == 1:
        accelerator.unwrap_model(model).load_state_dict(state, strict=False)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    sharded = _is_fsdp2(model) or accelerator.distributed_type == "FSDP"
    target = model if sharded else accelerator.unwrap_model(model)
    for module in target.modules():  # FSDP2 keeps the root's weights gathered after a forward; shard them back first
        if _is_fsdp2(module):
            module.reshard()
    set_model_state_dict(target, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False))


def _is_fsdp2(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
