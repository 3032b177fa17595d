"""One launcher for a single process and torchrun: the process group, DDP/FSDP wrapping, and full (gathered)
model and optimizer states for checkpoints and exports."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from omnivox.core.errors import ConfigError
from omnivox.core.kernel.model import OmniLM


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor


def setup_distributed(device_choice: str, num_threads: int | None) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_choice == "auto":
        device_choice = "cuda" if torch.cuda.is_available() else "cpu"
    if device_choice == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("training.device is cuda but no CUDA device is visible", "set training.device: cpu")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if num_threads is None and device.type == "cpu" and world > 1:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        num_threads = max(1, (os.cpu_count() or 1) // local_world)
    if num_threads:
        torch.set_num_threads(num_threads)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return Dist(rank, world, local_rank, device)


def wrap(model: OmniLM, mode: str, ctx: Dist, find_unused: bool) -> nn.Module:
    """DDP (parameters replicated, gradients all-reduced) or FSDP2 (`fully_shard` per block + root)."""
    if ctx.world == 1:
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.backbone.layers:
            fully_shard(layer)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                                   find_unused_parameters=find_unused)


def unwrap(model: nn.Module) -> OmniLM:
    return model.module if hasattr(model, "module") and isinstance(model.module, OmniLM) else model


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> tuple[dict, dict]:
    """(model state, optimizer state), complete on every rank (FSDP shards are gathered)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict(), optimizer.state_dict()


def set_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict,
                   fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
        return
    unwrap(model).load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)


def digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names and bytes (replica comparison)."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
