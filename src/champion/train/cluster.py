"""Where training runs: whether this machine has the configured accelerator, and which process is rank 0.

Both are decided before the Trainer exists: a missing GPU must fail before any MLflow run is
opened, and only global rank 0 may open one.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from champion.config import TrainingConfig
from champion.errors import ChampionError, ConfigError
from champion.progress import say

if TYPE_CHECKING:
    from lightning.fabric.plugins.environments import ClusterEnvironment  # annotations only

# Lightning (seconds to import) is imported inside the functions that use it (its accelerator classes
# only for a GPU or TPU config), not when this module is imported.


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


def _devices_per_node(devices: int | list[int] | str) -> int | None:
    """How many processes `training.devices` starts on each node; None when Lightning decides (auto, -1)."""
    if isinstance(devices, list):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return None
        return len([i for i in text.split(",") if i.strip()]) if "," in text else int(text)
    return None if devices == -1 else devices


def _int_variable(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer: set it to this node's (or process's) number") from None


def check_topology(t: TrainingConfig, env: "ClusterEnvironment") -> None:
    """Refuse, before any run is opened, a launch whose processes would not form one training group.

    Without this, a node started with `NODE_RANK=1` but `training.num_nodes` left at 1 trains alone
    as a silent extra; without `MASTER_PORT` every node picks its own random port; without
    `NODE_RANK` every node believes it is rank 0 and opens its own MLflow run. Each of these waits
    in the rendezvous until the timeout (30 minutes) instead of failing.

    Raises:
        ConfigError: a variable Lightning needs is missing or not a number, the node rank is not
            below `training.num_nodes`, or the launcher's world size is not num_nodes × devices.
    """
    from lightning.fabric.plugins.environments import LightningEnvironment

    per_node = _devices_per_node(t.devices)
    if type(env) is LightningEnvironment:
        # Lightning's own launcher: the user states the node and rank 0's address on each node.
        if t.num_nodes > 1:
            missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
            if "NODE_RANK" not in os.environ and "GROUP_RANK" not in os.environ:
                missing.append("NODE_RANK")
            if missing:
                raise ConfigError(
                    f"training.num_nodes={t.num_nodes} needs {', '.join(missing)} set on every node: MASTER_ADDR and "
                    "MASTER_PORT to rank 0's address and a free port on it (the same on every node), NODE_RANK to "
                    f"this node's number (0 to {t.num_nodes - 1}). See docs/training.md, Multi-node training."
                )
        for name in ("NODE_RANK", "GROUP_RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"):
            if name in os.environ:
                _int_variable(name)
        node = env.node_rank()
        if not 0 <= node < t.num_nodes:
            raise ConfigError(
                f"NODE_RANK={node}, but training.num_nodes={t.num_nodes} (node ranks run from 0 to num_nodes - 1): "
                "set training.num_nodes to the number of nodes"
            )
        stated = _int_variable("WORLD_SIZE") if "WORLD_SIZE" in os.environ else None
    else:
        stated = env.world_size()
    if stated is not None and per_node is not None and stated != per_node * t.num_nodes:
        raise ConfigError(
            f"the launcher ({type(env).__name__}) starts {stated} processes in all, but training.num_nodes={t.num_nodes} × "
            f"training.devices={per_node} is {per_node * t.num_nodes}: set training.num_nodes to the number of nodes "
            "and training.devices to the processes on each"
        )


def bind_gloo_interface(env: "ClusterEnvironment", wait_s: float | None = None) -> str | None:
    """Make gloo listen on the interface that leads to rank 0, unless GLOO_SOCKET_IFNAME says which.

    Gloo binds the address this host's name resolves to, and falls back to loopback when that is
    a loopback address (Debian and many images map the host name to 127.0.1.1): it then tells the
    other nodes to reach it at 127.0.0.1, and the group never forms. The interface holding the
    local address of the route to MASTER_ADDR is the one the other nodes can reach. Linux only;
    an IPv6-only master is left to gloo's default (set GLOO_SOCKET_IFNAME there).

    Args:
        env: The cluster environment, which knows MASTER_ADDR.
        wait_s: How long to wait for MASTER_ADDR to resolve; default: torch's rendezvous timeout
            (30 minutes), the time the other nodes wait for this one anyway.

    Returns:
        The interface gloo will use, or None when left to gloo.

    Raises:
        ChampionError: MASTER_ADDR does not resolve within `wait_s`, or this node has no route to it.
    """
    if "GLOO_SOCKET_IFNAME" in os.environ:
        return os.environ["GLOO_SOCKET_IFNAME"]
    if not sys.platform.startswith("linux"):
        return None
    if wait_s is None:
        from torch.distributed.constants import default_pg_timeout  # lazy: needs a torch built with distributed support

        wait_s = default_pg_timeout.total_seconds()
    address = env.main_address
    host = socket.gethostname()
    ipv4 = [info[4][0] for info in _resolve(address, host, wait_s) if info[0] == socket.AF_INET]
    if not ipv4:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((ipv4[0], 1))  # a UDP connect only picks the route: nothing is sent
        except OSError as exc:
            raise ChampionError(
                f"this node ({host}) has no route to MASTER_ADDR={address} ({ipv4[0]}): {exc.strerror}. Check the "
                "address, or the network between the nodes."
            ) from None
        local = probe.getsockname()[0]
    name = _interface_holding(local)
    if name is None:
        raise ChampionError(
            f"no network interface of this node ({host}) holds {local}, its address toward MASTER_ADDR={address}: "
            "set GLOO_SOCKET_IFNAME to the interface the other nodes reach this one on"
        )
    os.environ["GLOO_SOCKET_IFNAME"] = name
    return name


def _resolve(address: str, host: str, wait_s: float) -> list[tuple]:
    """getaddrinfo, retried for up to `wait_s`: Kubernetes publishes pod 0's DNS name (an indexed
    Job's `<job>-0.<service>`) only once that pod runs, and the other pods may start first."""
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            return socket.getaddrinfo(address, None, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            if time.monotonic() >= deadline:
                raise ChampionError(
                    f"MASTER_ADDR={address!r} does not resolve on this node ({host}): {exc.strerror}"
                    + (f" (waited {wait_s:.0f} s)" if wait_s else "")
                    + ". Set MASTER_ADDR to rank 0's IP address or a name every node resolves."
                ) from None
            if not waiting:
                say(f"MASTER_ADDR={address} does not resolve yet; waiting up to {wait_s:.0f} s for it")
                waiting = True
            time.sleep(min(2.0, max(deadline - time.monotonic(), 0.0)))


def _interface_holding(address: str) -> str | None:
    """The name of the interface whose IPv4 address is `address` (Linux's SIOCGIFADDR)."""
    import fcntl  # lazy: Unix only (Linux's SIOCGIFADDR); the module imports on any platform

    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
            except OSError:  # an interface without an IPv4 address (EADDRNOTAVAIL) cannot be the one
                continue
            if socket.inet_ntoa(answer[20:24]) == address:
                return name
    return None


def finish_together() -> None:
    """Leave the training group together: rank 0 once its run is complete, the others wait for it.

    Without this a worker exits 0 as soon as fit ends, while rank 0 may still fail to evaluate or
    log the model: the job would hold one failed and one succeeded node. Rank 0 calls it only on
    success; when it fails it exits instead, its connections close, and the others' wait ends in an
    error at once (or at the process-group timeout, 30 minutes, if its machine vanished). A no-op
    when no process group was formed (one process, or nothing was trained).

    Raises:
        ChampionError: another process of the group failed or went away before arriving.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.barrier()
    except RuntimeError as exc:  # DistBackendError: a peer closed its connections or the timeout passed
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ChampionError(
            f"global rank {dist.get_rank()} of {dist.get_world_size()}: another process of the training group failed "
            f"or went away before training completed ({first}); its own log says why"
        ) from exc


def prepare_group(t: TrainingConfig, env: "ClusterEnvironment") -> None:
    """Before data is prepared or any run is opened: check the launch, and pick gloo's interface across nodes."""
    check_topology(t, env)
    if t.num_nodes > 1:
        bind_gloo_interface(env)
