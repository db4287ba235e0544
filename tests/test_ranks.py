"""Only global rank 0 opens the MLflow run, under every launcher: the launchers' own variables.

MPI is detected through mpi4py (MPIEnvironment.detect asks MPI for the world size), which is not
installed here, so it is not tested."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from champion.train.cluster import cluster_environment, is_global_zero

LAUNCHER_VARIABLES = [
    "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
    "MASTER_ADDR", "MASTER_PORT", "KUBERNETES_PORT", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_PROCID",
    "SLURM_LOCALID", "SLURM_NODEID", "SLURM_JOB_NAME", "SLURM_JOB_ID", "SLURM_NODELIST", "LSB_JOBID",
    "LSB_DJOB_RANKFILE", "JSM_NAMESPACE_LOCAL_RANK", "JSM_NAMESPACE_SIZE", "JSM_NAMESPACE_RANK",
    ]  # fmt: skip


@pytest.fixture
def launcher(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Set exactly the variables a launcher sets (everything else of this kind removed, all restored after)."""
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def launch(**env: str) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value.replace("{tmp}", str(tmp_path)))

    return launch


def torchrun(rank: int, node: int) -> dict[str, str]:
    """torchrun --nnodes 2 --nproc-per-node 2: process `rank`, on node `node`."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank % 2), "GROUP_RANK": str(node), "WORLD_SIZE": "4",
            "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "job-1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}  # fmt: skip


def slurm(procid: int, node: int) -> dict[str, str]:
    """srun --nodes 2 --ntasks-per-node 2: task `procid`, on node `node`."""
    return {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(procid % 2),
            "SLURM_NODEID": str(node), "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "77", "SLURM_NODELIST": "node[1-2]"}  # fmt: skip


def kubeflow(rank: int) -> dict[str, str]:
    """A Kubeflow PyTorchJob pod: one process per pod, the operator sets RANK (no LOCAL_RANK)."""
    return {"KUBERNETES_PORT": "tcp://10.96.0.1:443", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456",
            "WORLD_SIZE": "3", "RANK": str(rank)}  # fmt: skip


def lsf(rank: int) -> dict[str, str]:
    """jsrun on LSF: the rank file lists this host (the launch node first)."""
    return {"LSB_JOBID": "12", "LSB_DJOB_RANKFILE": "{tmp}/rankfile", "JSM_NAMESPACE_LOCAL_RANK": str(rank % 2),
            "JSM_NAMESPACE_SIZE": "4", "JSM_NAMESPACE_RANK": str(rank)}  # fmt: skip


def lightning(local: int, node: int) -> dict[str, str]:
    """Processes Lightning launched itself (devices=2, num_nodes=2): the variables its launcher exports."""
    return {"LOCAL_RANK": str(local), "NODE_RANK": str(node), "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize(
    "env, environment, zero",
    [
        (torchrun(0, 0), "TorchElasticEnvironment", True),
        (torchrun(1, 0), "TorchElasticEnvironment", False),
        (torchrun(2, 1), "TorchElasticEnvironment", False),  # local rank 0 on the second node
        (slurm(0, 0), "SLURMEnvironment", True),
        (slurm(1, 0), "SLURMEnvironment", False),
        (slurm(2, 1), "SLURMEnvironment", False),
        (kubeflow(0), "KubeflowEnvironment", True),
        (kubeflow(2), "KubeflowEnvironment", False),  # its own pod: no LOCAL_RANK or NODE_RANK at all
        (lsf(0), "LSFEnvironment", True),
        (lsf(3), "LSFEnvironment", False),
        (lightning(0, 0), "LightningEnvironment", True),
        (lightning(1, 0), "LightningEnvironment", False),
        (lightning(0, 1), "LightningEnvironment", False),
        ({}, "LightningEnvironment", True),  # a plain `champion train`
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_rank_zero_under_each_launcher(launcher, tmp_path: Path, env: dict[str, str], environment: str, zero: bool) -> None:
    (tmp_path / "rankfile").write_text(f"launch-node\n{socket.gethostname()}\n{socket.gethostname()}\n")
    launcher(**env)
    detected = cluster_environment()
    assert type(detected).__name__ == environment
    assert is_global_zero(detected) is zero


def test_torchrun_inside_a_slurm_allocation_is_torchelastic(launcher) -> None:
    """As in Lightning: torchrun started under SLURM decides ranks, not the SLURM task id."""
    launcher(**slurm(0, 0), **torchrun(3, 1))
    assert type(cluster_environment()).__name__ == "TorchElasticEnvironment"
    assert not is_global_zero()

