"""Multi-node training: two `champion train` processes, each in its own network namespace, one DDP group over gloo.

Each node is a network namespace holding only loopback and one end of a veth pair (10.87.0.1/24 and
.2/24): the nodes reach each other across the veth pair only, over TCP, as two machines on one
link would. They share this machine's filesystem, as nodes share a network file system: one SQLite
MLflow store, one data cache, one checkpoint folder. Needs root and `ip netns` (CI runs as root);
skipped otherwise, with the reason.

The launch checks (`champion.cluster.check_topology`) and gloo's interface choice are tested
without namespaces.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from champion.errors import ChampionError, ConfigError
from servers import free_port

# Launcher variables of every kind (tests/test_ranks.py): none of the caller's may reach a node.
LAUNCHER_VARIABLES = (
    "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
    "MASTER_ADDR", "MASTER_PORT", "KUBERNETES_PORT", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_JOB_NAME",
    "LSB_JOBID", "JSM_NAMESPACE_RANK", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "MLFLOW_TRACKING_URI",
)  # fmt: skip

# Two epochs of digits at its own 8x8 resolution: 23 DDP steps an epoch on each node (its half of the
# 1437 training images), a global batch of 64; enough to pass Gate 1's default bar of 0.90.
TRAIN = ["train", "--quiet", "--epochs", "2", "--set", "data.image_size=[8,8]", "--set", "training.batch_size=32",
         "--set", "training.learning_rate=0.01", "--set", "training.num_nodes=2", "--set", "training.strategy=ddp"]  # fmt: skip
MASTER_PORT = "29500"  # each node has a network stack of its own: no port on this machine can clash


def _clean_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# --- the launch checks, without namespaces -------------------------------------------------------


def _training(**values):
    from champion.config import TrainingConfig

    return TrainingConfig(**values)


@pytest.mark.parametrize(
    "env, settings, message",
    [
        ({"NODE_RANK": "1"}, {"num_nodes": 2}, "MASTER_ADDR, MASTER_PORT set on every node"),
        ({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}, {"num_nodes": 2}, "NODE_RANK set on every node"),
        ({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "NODE_RANK": "1"}, {}, "NODE_RANK=1, but training.num_nodes=1"),
        ({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "NODE_RANK": "one"}, {"num_nodes": 2}, "NODE_RANK='one' is not an integer"),
        ({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "NODE_RANK": "0", "WORLD_SIZE": "4"}, {"num_nodes": 2},
         "starts 4 processes in all, but training.num_nodes=2 × training.devices=1 is 2"),
        # torchrun --nnodes 2 --nproc-per-node 2 with the config left at one node: four lone trainings, refused.
        ({"RANK": "2", "LOCAL_RANK": "0", "GROUP_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
          "TORCHELASTIC_RUN_ID": "job", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}, {"devices": 2},
         "(TorchElasticEnvironment) starts 4 processes in all, but training.num_nodes=1 × training.devices=2 is 2"),
    ],
    ids=["no-master", "no-node-rank", "node-rank-beyond-num-nodes", "node-rank-not-a-number", "world-size", "torchrun-one-node"],
)  # fmt: skip
def test_a_launch_that_cannot_form_one_group_is_refused(monkeypatch, env: dict, settings: dict, message: str) -> None:
    from champion.train.cluster import check_topology, cluster_environment

    _clean_launcher(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        check_topology(_training(**settings), cluster_environment())
    assert message in str(refused.value)


@pytest.mark.parametrize(
    "env, settings, launcher, rank_zero",
    [
        ({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "NODE_RANK": "1"}, {"num_nodes": 2}, "LightningEnvironment", False),
        # Lightning's own launcher on node 1 of 2, second device: what it exports to the process it starts.
        ({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "NODE_RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "4"},
         {"num_nodes": 2, "devices": 2}, "LightningEnvironment", False),
        ({"RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
          "TORCHELASTIC_RUN_ID": "job", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}, {"num_nodes": 2, "devices": "0,1"},
         "TorchElasticEnvironment", False),
        ({}, {}, "LightningEnvironment", True),  # a plain `champion train`
        ({}, {"devices": 2, "strategy": "ddp"}, "LightningEnvironment", True),  # one machine, Lightning starts the second process itself
    ],
    ids=["lightning-node-1", "lightning-child", "torchrun-2x2", "plain", "one-node-ddp"],
)  # fmt: skip
def test_a_consistent_launch_passes(monkeypatch, env: dict, settings: dict, launcher: str, rank_zero: bool) -> None:
    """Accepted, and the process knows its place in the one group: the launcher Lightning is handed,
    and whether it is global rank 0, the only process that opens the MLflow run."""
    from champion.train.cluster import check_topology, cluster_environment, is_global_zero

    _clean_launcher(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    found = cluster_environment()
    check_topology(_training(**settings), found)
    assert type(found).__name__ == launcher
    assert is_global_zero(found) is rank_zero


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the interface is found with Linux's SIOCGIFADDR")
def test_gloo_binds_the_interface_toward_master_addr(monkeypatch) -> None:
    from lightning.fabric.plugins.environments import LightningEnvironment

    from champion.train.cluster import bind_gloo_interface

    _clean_launcher(monkeypatch)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert bind_gloo_interface(LightningEnvironment()) == "lo" == os.environ["GLOO_SOCKET_IFNAME"]
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth7")  # the user's choice stands
    assert bind_gloo_interface(LightningEnvironment()) == "eth7"
    monkeypatch.delenv("GLOO_SOCKET_IFNAME")
    monkeypatch.setenv("MASTER_ADDR", "no-such-node.invalid")
    with pytest.raises(ChampionError, match=r"MASTER_ADDR='no-such-node.invalid' does not resolve .*\(waited 1 s\)"):
        bind_gloo_interface(LightningEnvironment(), wait_s=1)  # a name not published yet is waited for, boundedly


def test_num_nodes_without_a_master_fails_before_anything_starts(workdir: Path, cli, monkeypatch) -> None:
    _clean_launcher(monkeypatch)
    result = cli("train", "--quiet", "--set", "training.num_nodes=2")
    assert result.exit_code == 2, result.stderr
    assert "MASTER_ADDR, MASTER_PORT, NODE_RANK set on every node" in result.stderr
    assert not (workdir / "mlflow.db").exists() and not (workdir / "cache").exists()  # no run, no data prepared


# --- two nodes, two network namespaces ----------------------------------------------------------


@dataclass
class Node:
    namespace: str
    interface: str  # this node's end of the veth pair
    address: str

    def counter(self, name: str) -> int:
        """A counter of this node's veth end, e.g. rx_bytes (read inside its namespace, where its sysfs is)."""
        return int(_ip("netns", "exec", self.namespace, "cat", f"/sys/class/net/{self.interface}/statistics/{name}"))


@dataclass
class Cluster:
    """Two nodes on one veth link, and the `champion train` processes started in them."""

    nodes: tuple[Node, Node]
    processes: list[subprocess.Popen]

    def launch(self, rank: int, cwd: Path, *extra: str) -> subprocess.Popen:
        """`champion train` as node `rank` of 2, in that node's namespace, with the variables a user sets on a real node.

        GLOO_SOCKET_IFNAME is not set: champion finds the veth as the interface toward MASTER_ADDR.
        """
        node, master = self.nodes[rank], self.nodes[0]
        env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("CHAMPION_")}
        env |= {"MASTER_ADDR": master.address, "MASTER_PORT": MASTER_PORT, "NODE_RANK": str(rank),
                "XDG_CACHE_HOME": str(cwd / "cache")}  # fmt: skip
        exe = str(Path(sys.executable).with_name("champion"))
        # `ip netns exec` enters the namespace and execs the command: the process is champion itself.
        command = ["ip", "netns", "exec", node.namespace, exe, *TRAIN, *extra]
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.processes.append(proc)
        return proc


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """Two network namespaces joined by a veth pair. Afterwards, whatever happened, the processes
    started in them are killed and both namespaces removed.

    Names carry a random suffix, so parallel test runs never share a namespace; the addresses exist
    only inside the two namespaces, so runs using the same subnet cannot clash either.
    """
    if os.geteuid() != 0:
        pytest.skip("multi-node test: network namespaces need root (CI runs as root)")
    if shutil.which("ip") is None:
        pytest.skip("multi-node test: the `ip` command (iproute2) is not installed")
    tag = uuid.uuid4().hex[:8]
    pair = (Node(f"champion-{tag}-0", f"chv{tag}a", "10.87.0.1"), Node(f"champion-{tag}-1", f"chv{tag}b", "10.87.0.2"))
    created: list[str] = []
    result = Cluster(pair, [])
    try:
        for node in pair:
            try:
                _ip("netns", "add", node.namespace)
            except RuntimeError as exc:
                pytest.skip(f"multi-node test: network namespaces are not available here ({exc})")
            created.append(node.namespace)
        a, b = pair
        _ip("link", "add", a.interface, "type", "veth", "peer", "name", b.interface)
        for node in pair:
            _ip("link", "set", node.interface, "netns", node.namespace)
            _ip("-n", node.namespace, "addr", "add", f"{node.address}/24", "dev", node.interface)
            _ip("-n", node.namespace, "link", "set", node.interface, "up")
            _ip("-n", node.namespace, "link", "set", "lo", "up")
        yield result
    finally:
        for proc in result.processes:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        for namespace in created:  # removing a namespace removes its veth end, and with it the pair
            _ip("netns", "del", namespace)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"node still running after {timeout} s; its stderr:\n{err[-3000:]}") from None


def _runs(cwd: Path) -> list:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["champion"], output_format="list")


@pytest.mark.slow
def test_two_nodes_train_one_run_across_the_veth_pair(cluster: Cluster, workdir: Path, cli) -> None:
    import mlflow

    zero, one = cluster.nodes
    # The only way from node 1 to MASTER_ADDR is its veth end: the namespace has nothing else.
    assert f"dev {one.interface}" in _ip("-n", one.namespace, "route", "get", zero.address)
    links = [line.split(":")[1].strip().split("@")[0] for line in _ip("-n", one.namespace, "-o", "link", "show").splitlines()]
    assert sorted(links) == sorted(["lo", one.interface])
    before = [node.counter("rx_bytes") for node in cluster.nodes]

    worker = cluster.launch(1, workdir)
    chief = cluster.launch(0, workdir)
    out0, err0 = _finish(chief)
    out1, err1 = _finish(worker)
    assert chief.returncode == 0, err0[-3000:]
    assert worker.returncode == 0, err1[-3000:]
    assert out1 == ""  # a worker reports nothing

    # DDP's traffic crossed the pair, both ways: the model's 29k float32 parameters broadcast once,
    # then gradients every step (about 3 MB each way in all).
    received = [node.counter("rx_bytes") - b for node, b in zip(cluster.nodes, before)]
    assert all(n > 1_000_000 for n in received), received

    runs = _runs(workdir)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert out0.strip() == f"RUN_ID={run_id}"
    client = mlflow.MlflowClient()
    for key in ("val_accuracy", "val_loss", "train_loss", "best_val_accuracy", "learning_rate", "epoch_time"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [0, 1], key  # each epoch once
    assert runs[0].data.params["training.num_nodes"] == "2"
    # Checkpoints are rank 0's, in the run's own folder; node 1 wrote none.
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [run_id]

    # The model gates like a single-node one: Gate 1 reads the run's metric and registers it.
    result = cli("promote", "--run-id", run_id, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert result.values["RESULT"] == "passed" and result.values["MODEL_VERSION"] == "1"
    version = client.get_model_version_by_alias(runs[0].data.tags["mlflow.runName"], "champion")
    assert version.run_id == run_id
    report = mlflow.artifacts.load_dict(f"runs:/{run_id}/gate_report.json")
    assert report["candidate"]["value"] == client.get_run(run_id).data.metrics["best_val_accuracy"]


@pytest.mark.slow
def test_a_node_that_dies_fails_the_other(cluster: Cluster, workdir: Path) -> None:
    """SIGKILL node 1 mid-training: node 0 notices at the next exchange, marks its run FAILED and exits 1."""
    longer = ["--set", "training.epochs=30", "--set", "training.early_stopping.patience=100"]
    worker = cluster.launch(1, workdir, *longer)
    chief = cluster.launch(0, workdir, *longer)
    # The first epoch's last.ckpt (saved after its metrics are logged): the group is mid-training.
    # Polled on the file system: opening the store while rank 0 creates it would race its migration.
    deadline = time.monotonic() + 240
    while not list(workdir.glob("checkpoints/*/last.ckpt")):
        assert chief.poll() is None and worker.poll() is None, "a node ended before the first epoch"
        assert time.monotonic() < deadline, "the group never finished an epoch"
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, err0 = _finish(chief, timeout=120)
    noticed = time.monotonic() - killed
    assert chief.returncode == 1, err0[-3000:]
    assert noticed < 60, f"node 0 took {noticed:.0f} s to notice"
    runs = _runs(workdir)
    assert [r.info.status for r in runs] == ["FAILED"]  # never left RUNNING


def test_the_documented_kubernetes_manifests_are_valid_and_consistent() -> None:
    """docs/training.md's indexed Job and headless Service: strict against the client's models, and wired as
    the launch checks require (every node's NODE_RANK, pod 0's name as MASTER_ADDR, one pod per node)."""
    import re

    import yaml

    from kube_models import validate

    page = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    section = page[page.index("## Multi-node training"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    service, job = list(yaml.safe_load_all(block))
    validate(service, "V1Service")
    validate(job, "V1Job")
    pod = job["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    name = job["metadata"]["name"]
    assert env["MASTER_ADDR"]["value"] == f"{name}-0.{pod['subdomain']}" and pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"job-name": name} and service["spec"]["clusterIP"] == "None"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"]
    assert f"training.num_nodes={job['spec']['completions']}" in pod["containers"][0]["args"]


_PEER = """
import os, sys
import torch.distributed as dist
from champion.train.cluster import finish_together
from champion.errors import ChampionError
dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=2)
if dist.get_rank() == 0:
    sys.exit(1)  # rank 0 fails after training: it never arrives
try:
    finish_together()
except ChampionError as exc:
    print(exc)
    sys.exit(7)
"""


def test_a_rank_waiting_for_rank_zero_fails_when_rank_zero_does(tmp_path: Path) -> None:
    """finish_together on a worker: rank 0 exiting without arriving ends the wait at once, as an error."""
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "GLOO_SOCKET_IFNAME": "lo"}
    procs = [subprocess.Popen([sys.executable, "-c", _PEER], env={**env, "RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]  # fmt: skip
    try:
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 1
    assert procs[1].returncode == 7, outputs[1][1][-2000:]
    assert "another process of the training group failed or went away" in outputs[1][0]
