"""Where training runs: whether this machine has the configured accelerator, and which process is rank 0.

Both are decided before the Trainer exists: a missing GPU must fail before any MLflow run is
opened, and only global rank 0 may open one.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import torch

from champion.config import TrainingConfig
from champion.errors import ChampionError

if TYPE_CHECKING:
    from lightning.fabric.plugins.environments import ClusterEnvironment


def check_hardware(t: TrainingConfig) -> None:
    """Fail before any work when the configured accelerator or device indices are not on this machine.

    The config only checks syntax (a GPU cluster's config loads on a laptop); this checks the machine.
    """
    if t.accelerator in ("cpu", "auto"):
        return
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator

    kinds = {"cuda": CUDAAccelerator, "mps": MPSAccelerator, "tpu": XLAAccelerator}
    wanted = ("cuda", "mps") if t.accelerator == "gpu" else (t.accelerator,)
    found = [k for k in wanted if kinds[k].is_available()]
    host = socket.gethostname()
    if not found:
        raise ChampionError(
            f"training.accelerator={t.accelerator}: this machine ({host}) has no {' or '.join(wanted)} device. "
            "Use training.accelerator=cpu (or auto), or run on a machine that has one."
        )
    # Under torchrun each process may see only its own GPU: Lightning skips this count check there too.
    if found[0] == "cuda" and not torch.distributed.is_torchelastic_launched():
        count = torch.cuda.device_count()
        needed = _cuda_devices_needed(t.devices)
        if needed > count:
            raise ChampionError(
                f"training.devices={t.devices!r} needs {needed} CUDA device(s) (or index {needed - 1}), but this "
                f"machine ({host}) has {count}: lower training.devices or use indices below {count}."
            )


def _cuda_devices_needed(devices: int | list[int] | str) -> int:
    """How many CUDA devices `devices` needs to exist (a count, or the highest index + 1; 0 for auto/-1)."""
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return 0
        devices = [int(i) for i in text.split(",") if i.strip()] if "," in text else int(text)
    if isinstance(devices, list):
        return max(devices) + 1
    return max(devices, 0)


def cluster_environment() -> "ClusterEnvironment":
    """The launcher this process runs under, chosen as Lightning's Trainer chooses it.

    TorchElastic comes first (it also runs inside SLURM jobs), then SLURM, LSF and MPI, as in
    Lightning's accelerator connector. Kubeflow's PyTorchJob, which Lightning does not detect by
    itself, is recognised by the variables its operator sets; the Trainer is handed this same
    environment, so rank decisions made here and by Lightning always agree.
    """
    from lightning.fabric.plugins.environments import (
        KubeflowEnvironment,
        LightningEnvironment,
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    for env_type in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        if env_type.detect():
            return env_type()
    if {"KUBERNETES_PORT", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"} <= os.environ.keys():
        return KubeflowEnvironment()
    return LightningEnvironment()


def is_global_zero(env: "ClusterEnvironment | None" = None) -> bool:
    """Whether this process is global rank 0: the only one that opens the MLflow run.

    Decided before the Trainer exists. Lightning's own environment (a single machine, or processes
    launched by Lightning) sets the global rank only when the strategy is set up, from the node rank
    and the local rank; every other launcher states it.
    """
    from lightning.fabric.plugins.environments import LightningEnvironment

    env = env if env is not None else cluster_environment()
    if type(env) is LightningEnvironment:
        return env.node_rank() == 0 and env.local_rank() == 0
    return env.global_rank() == 0
