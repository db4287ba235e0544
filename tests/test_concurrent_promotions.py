"""Concurrent promotions lose nothing: four `champion promote` processes at once, on SQLite and on
`mlflow server` with PostgreSQL; two exports validated at once; the lease that serialises them.

Real parts only: real 1-epoch training on digits (four learning rates, so four distinct scores),
real processes released together from a barrier after their imports, a real `mlflow server` on a
fresh PostgreSQL database, real process freezes (SIGSTOP) and crashes (SIGKILL) for the lease.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

import servers
from conftest import invoke, module_workdir

pytestmark = pytest.mark.slow
NAME = "race-cnn"
MIN_IMPROVEMENT = 0.01
# (learning rate, epochs): best_val_accuracy about 0.24, 0.80, 0.92 and 0.975 on digits, each far
# more than MIN_IMPROVEMENT from the next, so a race that keeps a worse one shows.
CANDIDATES = (("0.0001", 1), ("0.0003", 1), ("0.001", 1), ("0.003", 2))
BETTER = ("0.003", 3)  # about 0.99: beats any of them
CRITERIA = [
    "--set", "promotion_criteria.threshold=0.0", "--set", f"promotion_criteria.min_improvement={MIN_IMPROVEMENT}",
    "--set", "export.num_samples=10", "--set", "export.batch_sizes=[1, 4]",
]  # fmt: skip
PYTHON = sys.executable

# A process that imports champion and warms its store connection, then waits for the go file, so
# that all of them start the real CLI command within milliseconds of each other.
BARRIER = """
import importlib, sys, time
from pathlib import Path
from champion import cli
from champion.registry import tracking
importlib.import_module({"promote": "champion.stages.promote", "validate": "champion.stages.validate"}[sys.argv[2]])
tracking.setup_tracking()
tracking.client().search_experiments(max_results=1)
Path(sys.argv[1] + ".ready").touch()
while not Path(sys.argv[1]).exists():
    time.sleep(0.002)
sys.argv = ["champion", *sys.argv[2:]]
cli.app()
"""


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Train with one torch thread: on a loaded 2-core machine, more threads spin against each other (7x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(*candidates: tuple[str, int]) -> list[str]:
    ids = []
    with one_thread():
        for lr, epochs in candidates:
            trained = invoke("train", "--quiet", "--epochs", str(epochs), "--set", f"model.name={NAME}",
                             "--set", f"training.learning_rate={lr}", *CRITERIA)  # fmt: skip
            assert trained.exit_code == 0, trained.stderr
            ids.append(trained.values["RUN_ID"])
    return ids


def at_once(commands: list[list[str]], cwd: Path, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Run champion commands in parallel processes, released together once all have imported champion."""
    go = cwd / f"go-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([PYTHON, "-c", BARRIER, f"{go}.{i}", *cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i, cmd in enumerate(commands)]  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not all(Path(f"{go}.{i}.ready").exists() for i in range(len(procs))):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            assert time.monotonic() < deadline, "the processes did not get ready"
            time.sleep(0.01)
        for i in range(len(procs)):
            Path(f"{go}.{i}").touch()
        done = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        return done
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def aliases(name: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return {k: str(v) for k, v in MlflowClient().get_registered_model(name).aliases.items()}


def values(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line and line.split("=")[0].isupper())


def promote_all_at_once(run_ids: list[str], cwd: Path) -> list[dict]:
    """Promote the runs in four processes at once; each one's exit code, printed values and gate report."""
    from champion.registry import tracking

    done = at_once([["promote", "--run-id", r, "--quiet"] for r in run_ids], cwd)
    outcomes = []
    for run_id, proc in zip(run_ids, done):
        assert proc.returncode in (0, 3), proc.stdout + proc.stderr  # passed or rejected, never an error
        report = json.loads(tracking.read_artifact(run_id, "gate_report.json"))
        outcomes.append({"run_id": run_id, "code": proc.returncode, "values": values(proc.stdout), "report": report})
    return outcomes


def assert_nothing_lost(outcomes: list[dict]) -> None:
    """Issue 11's conditions on the registry after concurrent promotions."""
    from mlflow import MlflowClient

    from champion.registry import history, policy, tracking

    c = MlflowClient()
    model = c.get_registered_model(NAME)
    champion = c.get_model_version(NAME, model.aliases["champion"])
    champion_value = float(champion.tags["gate1.value"])
    min_improvement = policy.stored(NAME).promotion_criteria.min_improvement
    assert min_improvement == MIN_IMPROVEMENT
    # No candidate beats the champion by the stored min_improvement (by its gate-report value).
    for o in outcomes:
        assert o["report"]["candidate"]["value"] - champion_value < min_improvement, (o["report"], champion_value)

    moves = history.events(NAME, alias="champion")
    passed = [o for o in outcomes if o["report"]["result"] == "passed"]
    # The history shows each move: one per passed candidate, chained (each left what the last one set).
    assert len(moves) == len(passed) >= 1
    assert [m.from_version for m in moves] == [None] + [m.to_version for m in moves[:-1]]
    assert moves[-1].to_version == str(champion.version)
    assert len({m.details["lease"] for m in moves}) == len(moves)  # each under its own lease ticket
    # Every report agrees with the order of the moves: a passed candidate was compared against the
    # very version its move replaced, and beat it by min_improvement on the registered values.
    by_version = {m.to_version: m for m in moves}
    for o in passed:
        move = by_version[o["values"]["MODEL_VERSION"]]
        judged = o["report"]["champion"]
        assert (judged and str(judged["version"])) == move.from_version, (o["report"], move)
        assert move.report == f"runs:/{o['run_id']}/gate_report.json"
        if judged:
            assert judged["value"] == pytest.approx(float(c.get_model_version(NAME, judged["version"]).tags["gate1.value"]), abs=1e-6)
            assert o["report"]["candidate"]["value"] - judged["value"] >= min_improvement - 1e-12
    # A rejected candidate was compared against a real holder, and did not beat it.
    holders = {m.to_version for m in moves}
    for o in outcomes:
        if o["report"]["result"] == "failed":
            judged = o["report"]["champion"]
            assert str(judged["version"]) in holders and o["report"]["decided_by"] == "improvement_over_champion", o["report"]
            assert o["report"]["candidate"]["value"] - judged["value"] < min_improvement
    # previous_champion is a real former holder: the one the last move replaced.
    previous = model.aliases.get("previous_champion")
    if len(moves) > 1:
        assert str(previous) == moves[-1].from_version and str(previous) in holders
    else:
        assert previous is None
    # Every lease ticket was released, and the lease's model stays out of champion's listings.
    tickets = c.search_model_versions(f"name = '{NAME}@lease'")
    assert tickets and {t.tags["state"] for t in tickets} == {"released"}
    assert f"{NAME}@lease" not in {m.name for m in tracking.registered_models()}
    assert f"{NAME}@lease" in {m.name for m in c.search_registered_models()}
    listed = invoke("models")
    assert listed.exit_code == 0 and "@lease" not in listed.stdout and NAME in listed.stdout, listed.stdout + listed.stderr


# --- SQLite ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with module_workdir(tmp_path_factory, "concurrent") as root:
        yield root


@pytest.fixture(scope="module")
def promoted(sqlite_store: Path) -> list[dict]:
    return promote_all_at_once(train(*CANDIDATES), sqlite_store)


def test_four_promotions_at_once_on_sqlite(sqlite_store: Path, promoted: list[dict]) -> None:
    assert_nothing_lost(promoted)
    # The best candidate won: the others are each more than min_improvement below it.
    best = max(promoted, key=lambda o: o["report"]["candidate"]["value"])
    assert best["code"] == 0 and best["report"]["result"] == "passed"
    from mlflow import MlflowClient

    assert MlflowClient().get_model_version(NAME, best["values"]["MODEL_VERSION"]).aliases == ["champion"]


def test_two_exports_validated_at_once(sqlite_store: Path, promoted: list[dict]) -> None:
    """An export whose version is no longer @champion leaves @deploy alone; the current one's moves it."""
    from mlflow import MlflowClient

    from champion.registry import history

    c = MlflowClient()
    old = invoke("export", "--model-name", NAME, "--quiet")  # of the champion, which a better run then replaces
    assert old.exit_code == 0, old.stderr
    (better,) = train(BETTER)
    promoted = invoke("promote", "--run-id", better, "--quiet")
    assert promoted.exit_code == 0, promoted.stdout + promoted.stderr
    champion = promoted.values["MODEL_VERSION"]
    new = invoke("export", "--model-name", NAME, "--quiet")
    assert new.exit_code == 0, new.stderr
    exports = {"old": old.values["EXPORT_RUN_ID"], "new": new.values["EXPORT_RUN_ID"]}
    done = dict(zip(exports, at_once([["validate", "--export-run-id", e, "--quiet"] for e in exports.values()], sqlite_store)))
    for proc in done.values():
        assert proc.returncode == 0, proc.stdout + proc.stderr
    onnx = {k: values(p.stdout)["MODEL_VERSION"] for k, p in done.items()}
    assert aliases(f"{NAME}-onnx") == {"deploy": onnx["new"]}
    assert c.get_model_version(f"{NAME}-onnx", onnx["new"]).tags["parent_model_version"] == champion
    stale = c.get_model_version(f"{NAME}-onnx", onnx["old"]).tags
    assert stale["gate2.result"] == "passed" and stale["gate2.deploy"].startswith("skipped: "), stale
    moves = history.events(NAME, alias="deploy")
    assert [(m.from_version, m.to_version) for m in moves] == [(None, onnx["new"])]
    assert moves[0].report == f"runs:/{exports['new']}/validation_report.json"

    # A rollback holds the lease too: its moves carry their ticket, released afterwards.
    rolled = invoke("models", "rollback", NAME, "--alias", "champion")
    assert rolled.exit_code == 0, rolled.stderr
    ticket = history.events(NAME, alias="champion")[-1].details["lease"]
    tags = c.get_model_version(f"{NAME}@lease", ticket).tags
    assert tags["purpose"].startswith("rollback @champion") and tags["state"] == "released"


# --- mlflow server with PostgreSQL ------------------------------------------------------------------


@contextlib.contextmanager
def postgres_server(root: Path) -> Iterator[str]:
    """`mlflow server` (2 workers) on a fresh PostgreSQL database, dropped afterwards; yields its URL."""
    reason = servers.postgres_unavailable()
    if reason:
        pytest.skip(reason)
    with servers.postgres_database("champion_race") as db, servers.MlflowServer(
        db, str(root / "artifacts"), workers=2, log=root / "server.log"
    ) as server:
        yield server.url


def test_four_promotions_at_once_on_a_postgresql_server(tmp_path_factory: pytest.TempPathFactory) -> None:
    import mlflow

    root = tmp_path_factory.mktemp("race-server")
    previous = mlflow.get_tracking_uri()
    with postgres_server(root) as url, module_workdir(tmp_path_factory, "race-server-client", MLFLOW_TRACKING_URI=url) as cwd:
        mlflow.set_tracking_uri(url)
        try:
            outcomes = promote_all_at_once(train(*CANDIDATES), cwd)
            assert_nothing_lost(outcomes)
        finally:
            mlflow.set_tracking_uri(previous)
        assert not (cwd / "mlflow.db").exists()  # everything went to the server


# --- the lease itself -------------------------------------------------------------------------------

# Holds the lease of the model argv[1] (ttl 3 s), says so, then on a line from stdin tries to move @champion.
HOLDER = """
import sys
from champion.registry import history, lease, tracking
tracking.setup_tracking()
with lease.hold(sys.argv[1], "test holder", ttl_s=3) as held:
    print("HELD", held.ticket, flush=True)
    sys.stdin.readline()
    history.move_alias(sys.argv[1], "champion", "2", "test", lease=held)
"""


def start_holders(cwd: Path, *models: str) -> list[tuple[subprocess.Popen, str]]:
    procs = [subprocess.Popen([PYTHON, "-c", HOLDER, m], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for m in models]  # fmt: skip
    started = []
    for proc in procs:
        line = proc.stdout.readline()
        assert line.startswith("HELD"), line + proc.stderr.read()
        started.append((proc, line.split()[1]))
    return started


def registered(name: str):
    """Registered model `name` with versions 1 and 2, @champion on 1 (a version's source needs no files here)."""
    from mlflow import MlflowClient

    from champion.registry import tracking

    tracking.setup_tracking()
    c = MlflowClient()
    c.create_registered_model(name)
    for _ in range(2):
        c.create_model_version(name, "champion-lease:/none", await_creation_for=0)
    c.set_registered_model_alias(name, "champion", "1")
    return c


def test_frozen_and_crashed_holders_are_passed_over_and_a_frozen_one_then_moves_nothing(sqlite_store: Path) -> None:
    from champion.registry import lease

    c = registered("frozen")
    registered("crashed")
    (frozen, frozen_ticket), (crashed, crashed_ticket) = start_holders(sqlite_store, "frozen", "crashed")
    try:
        frozen.send_signal(signal.SIGSTOP)  # no heartbeat from now on
        crashed.kill()  # SIGKILL: no release either
        crashed.wait()
        started = time.monotonic()
        with lease.hold("frozen", "test taker", wait_s=30) as taken:
            waited = time.monotonic() - started
            assert 2.0 < waited < 15, waited  # about the holder's 3 s ttl after its last renewal
            stale = c.get_model_version("frozen@lease", frozen_ticket).tags
            assert stale["state"] == "expired" and stale["expired_by_ticket"] == taken.ticket
            frozen.send_signal(signal.SIGCONT)
            out, err = frozen.communicate("move\n", timeout=60)
            # Fencing: the old holder woke up, tried to move @champion and was refused.
            assert frozen.returncode == 1 and "LeaseLost" in err and "was marked 'expired'" in err, out + err
            assert aliases("frozen") == {"champion": "1"}
            taken.check()  # the new holder still holds it
        # The crashed holder's ticket expired meanwhile: the lease is free at once.
        started = time.monotonic()
        with lease.hold("crashed", "after the crash", wait_s=30) as after:
            assert time.monotonic() - started < 5
        assert c.get_model_version("crashed@lease", crashed_ticket).tags["state"] == "expired"
        assert c.get_model_version("crashed@lease", after.ticket).tags["state"] == "released"
    finally:
        for proc in (frozen, crashed):
            proc.kill()
            proc.wait()


def test_the_lease_is_released_on_error_and_waiters_are_told_who_holds_it(sqlite_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from champion.registry import history, lease
    from champion.errors import ConfigError

    for bad in ("soon", "0", "inf"):
        monkeypatch.setenv("CHAMPION_LEASE_TTL_SECONDS", bad)
        with pytest.raises(ConfigError, match=f"CHAMPION_LEASE_TTL_SECONDS='{bad}'"):
            with lease.hold("m", "misconfigured"):
                pass
    monkeypatch.delenv("CHAMPION_LEASE_TTL_SECONDS")
    c = registered("m")
    with pytest.raises(RuntimeError, match="boom"):
        with lease.hold("m", "failing step") as failed:
            raise RuntimeError("boom")
    assert c.get_model_version("m@lease", failed.ticket).tags["state"] == "released"

    with lease.hold("m", "long step") as held:
        started = time.monotonic()
        with pytest.raises(lease.LeaseTimeout, match="held by 'long step'"):
            with lease.hold("m", "impatient", wait_s=0.5):
                pass
        assert time.monotonic() - started < 10
        with pytest.raises(ValueError, match="lease"):  # a lease covers the aliases of its own model only
            history.move_alias("other", "champion", "1", "test", lease=held)
        moved = history.move_alias("m", "champion", "2", "test", lease=held)
        assert (moved.from_version, moved.to_version, moved.event.details["lease"]) == ("1", "2", held.ticket)
    # Released: the next one gets it at once, and every ticket is closed.
    with lease.hold("m", "next", wait_s=1):
        pass
    states = {v.version: v.tags["state"] for v in c.search_model_versions("name = 'm@lease'")}
    assert set(states.values()) == {"released"}, states
