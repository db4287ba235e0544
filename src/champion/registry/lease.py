"""A lease per registered model: what serialises every alias move (`history.move_alias`).

MLflow has no compare-and-set on aliases and its REST API exposes no database lock. What every
registry store does have (SQLite, PostgreSQL, any `mlflow server` in front of them) is an atomic
counter: `create_model_version` gives a new version of a registered model the next number, in one
transaction, never the same number twice and never one again after a deletion (the SQL store keeps
deleted versions' rows). The lease is a queue of tickets on that counter, so one protocol serves a
local SQLite file and a team's server alike, through nothing but the public REST API:

- **Ticket.** To act on model `<name>`, a process creates a version of the hidden registered model
  `<name>@lease` (champion never makes a name with `@`, so it cannot collide with a user's model;
  `tracking.registered_models` leaves it out). Its tags say `state=open`, who holds it (`holder`, a
  fresh id, with `host`, `pid`, `user`, `purpose`) and its `ttl_ms`. The store stamps it with the
  time on its own clock.
- **Queue.** The lease belongs to the lowest-numbered open ticket that has not expired. A process
  waits until no such ticket lies below its own, polling the open tickets with backoff.
- **Expiry.** A ticket is alive while it is renewed: `update_model_version` makes the store stamp
  its `last_updated_timestamp` (store clock, so clients' clocks never matter). A heartbeat thread
  renews every `ttl/8`. A ticket not renewed for `ttl_ms` belongs to a dead or frozen process:
  whoever finds it below their own tags it `state=expired` and passes it (stale takeover). A crash
  therefore blocks the model for at most `ttl` (60 s by default).
- **Fencing.** A holder that was frozen past its ttl must not act on a lease that someone else has
  since taken. `check()` renews and verifies, right before every alias move, that the ticket is
  still open and was renewed within `ttl - ttl/4` of this renewal; otherwise it raises LeaseLost
  and the move does not happen. Other processes judge expiry by a store time taken before they read
  the ticket, so a holder that passes the check has not been judged expired (the quarter of the ttl
  covers a request whose store timestamp and commit are apart, and skew between server workers).
- **Release.** `state=released` (on every exit path of `hold`, errors included). Tickets are never
  deleted (an EDIT user may not delete versions on an authenticated server), so `<name>@lease`
  keeps one version per alias-moving step: who held the lease, for what, and when.

The guarantee: while a process holds the lease of `<name>`, no other process that uses this module
moves an alias of `<name>` or `<name>-onnx`, provided each alias-move request completes within
`ttl` of the check before it (milliseconds in practice) and no store request stalls between its
timestamp and its commit for more than `ttl/4`. A process that breaks those bounds learns it at its
next check. Cost, uncontended: one ticket (one request), one search, one renewal per alias move and
one release.

Settings (environment, seconds): CHAMPION_LEASE_TTL_SECONDS (60), CHAMPION_LEASE_WAIT_SECONDS (600,
how long to wait for the lease before giving up with the holder named).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from typing import Iterator

from champion.registry import tracking
from champion.errors import ChampionError, ConfigError, RegistryError
from champion import names

# MLflow (seconds to import) is imported inside the functions that use it: `champion --help` imports
# this module (through champion.cli.models).

LEASE_TAG = names.LEASE_OWNER  # on `<name>@lease`: the model whose lease it is
# The server checks a version's source; an absolute path under a scheme nothing resolves names nothing.
SOURCE = "champion-lease:/ticket"
OPEN, RELEASED, EXPIRED = "open", "released", "expired"
TTL_ENV = "CHAMPION_LEASE_TTL_SECONDS"
WAIT_ENV = "CHAMPION_LEASE_WAIT_SECONDS"
DEFAULT_TTL_S = 60.0
DEFAULT_WAIT_S = 600.0
_MAX_POLL_S = 1.0

_logger = logging.getLogger(__name__)


class LeaseLost(RegistryError):
    """This process's lease expired (it was stalled, or the registry unreachable, for longer than the ttl)."""


class LeaseTimeout(RegistryError):
    """Another process held the lease for longer than this one would wait."""


def _seconds(env: str, default: float) -> float:
    text = os.environ.get(env)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{env}={text!r}: a number of seconds above 0 (unset: {default:g})")
    return value


class Lease:
    """A ticket this process took; it holds the lease once `hold` returns it (see the module docstring)."""

    def __init__(self, model: str, ticket: str, holder: str, ttl_ms: int, stamped_ms: int, purpose: str) -> None:
        self.model = model
        self.name = names.lease_name(model)
        self.ticket = ticket
        self.holder = holder
        self.purpose = purpose
        self.ttl_ms = ttl_ms
        self._renewed_ms = stamped_ms  # store time of the last renewal this process saw
        self._renewed_at = time.monotonic()  # when its answer arrived here
        self._lost: str | None = None
        self._closed = False  # another process closed the ticket (marked it expired): nothing to release
        self._lock = threading.Lock()  # the heartbeat and the caller renew in turn
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Lease({self.name!r} ticket {self.ticket}, {self.purpose})"

    @property
    def lost(self) -> str | None:
        """Why the lease was lost (None while it holds): seen at a renewal, by the heartbeat or `check`."""
        return self._lost

    @property
    def margin_ms(self) -> int:
        return self.ttl_ms // 4

    def now_ms(self) -> int:
        """The store's time now, at the latest: the last renewal's stamp plus the time since its answer.

        Never ahead of the store's clock (the stamp was taken before the answer left), so a ticket
        judged expired by it really is.
        """
        return self._renewed_ms + int((time.monotonic() - self._renewed_at) * 1000)

    def renew(self) -> None:
        """Have the store stamp the ticket now; note the lease lost if it was closed or renewed too late."""
        with self._lock:
            with tracking.registry_errors(f"renew lease ticket {self.ticket} of {self.name!r}"):
                mv = _registry().update_model_version(self.name, self.ticket, self._description())
            stamped, arrived = int(mv.last_updated_timestamp), time.monotonic()
            gap = stamped - self._renewed_ms
            state = mv.tags.get("state")
            if self._lost is None:
                if state != OPEN:
                    self._closed = True
                    self._lost = f"ticket {self.ticket} was marked {state!r} by another process"
                elif gap > self.ttl_ms - self.margin_ms:
                    self._lost = (
                        f"ticket {self.ticket} went {gap / 1000:.1f} s without renewal (the lease allows "
                        f"{(self.ttl_ms - self.margin_ms) / 1000:g} s of its {self.ttl_ms / 1000:g} s ttl)"
                    )
            self._renewed_ms, self._renewed_at = stamped, arrived

    def check(self) -> None:
        """Fencing: renew now and raise LeaseLost unless this ticket still holds the lease.

        Raises:
            LeaseLost: the lease expired (this process stalled, or the registry was unreachable) and
                another process may have taken it; nothing may be moved under it.
        """
        self.renew()
        if self._lost is not None:
            raise LeaseLost(
                f"the lease on {self.model!r} ({self.purpose}) was lost: {self._lost}. Another process may "
                f"have moved its aliases since, so this step moved nothing more; run it again"
            )

    def release(self) -> None:
        """Close the ticket (it stays as a record): the next ticket in the queue holds the lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._closed:
            return
        with tracking.registry_errors(f"release lease ticket {self.ticket} of {self.name!r}"):
            _registry().set_model_version_tag(self.name, self.ticket, "state", RELEASED)

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.name}-{self.ticket}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        # Every ttl/8: a renewal may fail or come late five times before the lease is lost.
        while not self._stop.wait(self.ttl_ms / 8000):
            try:
                self.renew()
            except RegistryError as exc:  # the registry blipped: the next renewal (or check) tells
                _logger.warning("%s: renewal failed (%s); retrying in %.1f s", self, exc, self.ttl_ms / 8000)

    def _description(self) -> str:
        return f"champion lease ticket: {self.purpose} (holder {self.holder} on {socket.gethostname()}, pid {os.getpid()})"


@contextlib.contextmanager
def hold(model: str, purpose: str, *, ttl_s: float | None = None, wait_s: float | None = None) -> Iterator[Lease]:
    """Hold the lease of `model` for the body of the `with`; released on every exit, errors included.

    Args:
        model: The registered model whose aliases (and `<model>-onnx`'s) will be moved.
        purpose: What for, recorded on the ticket (`gate1 run <id>`, `gate2 export run <id>`, `rollback`).
        ttl_s: Seconds without renewal after which the ticket counts as abandoned (CHAMPION_LEASE_TTL_SECONDS).
        wait_s: Seconds to wait for other holders before giving up (CHAMPION_LEASE_WAIT_SECONDS).

    Raises:
        LeaseTimeout: another process held the lease for longer than `wait_s` (it is named).
        RegistryError: the registry could not be reached.
    """
    ttl_ms = int(1000 * (ttl_s if ttl_s is not None else _seconds(TTL_ENV, DEFAULT_TTL_S)))
    wait = wait_s if wait_s is not None else _seconds(WAIT_ENV, DEFAULT_WAIT_S)
    lease = _acquire(model, purpose, ttl_ms, wait)
    try:
        yield lease
    except BaseException as exc:
        _release_during(exc, lease)
        raise
    try:
        lease.release()
    except RegistryError as failed:  # the step's work is done; the ticket expires on its own
        _logger.warning("%s; it expires %g s after its last renewal", failed, ttl_ms / 1000)


def _release_during(exc: BaseException, lease: Lease) -> None:
    """Release `lease` while `exc` propagates; a failure to release is noted on `exc`, which stays the error."""
    try:
        lease.release()
    except RegistryError as failed:
        exc.add_note(f"(lease ticket {lease.ticket} of {lease.name!r} could not be released: {failed}; "
                     f"it expires {lease.ttl_ms / 1000:g} s after its last renewal)")  # fmt: skip


def _acquire(model: str, purpose: str, ttl_ms: int, wait_s: float) -> Lease:
    deadline = time.monotonic() + wait_s
    lease = _take_ticket(model, purpose, ttl_ms)
    try:
        delay = 0.05
        while True:
            if lease.lost is not None:  # stalled while waiting and passed over by others: queue again
                lease.release()
                lease = _take_ticket(model, purpose, ttl_ms)
            ahead = _live_tickets_below(lease)
            if not ahead:
                lease.renew()  # not passed over while deciding (else queue again): the lease is ours
                if lease.lost is None:
                    return lease
                continue
            if time.monotonic() > deadline:
                t = ahead[0].tags
                raise LeaseTimeout(
                    f"waited {wait_s:g} s for the lease on {model!r} ({purpose}); it is held by "
                    f"{t.get('purpose', '?')!r} (pid {t.get('pid', '?')} on {t.get('host', '?')}, user {t.get('user', '?')}, "
                    f"ticket {ahead[0].version} of {lease.name!r}). If that process is gone, its ticket expires "
                    f"{int(t.get('ttl_ms', ttl_ms)) / 1000:g} s after its last renewal; otherwise wait for it or "
                    f"raise {WAIT_ENV}"
                )
            time.sleep(delay * random.uniform(0.5, 1.5))  # jitter: waiters do not poll in step
            delay = min(delay * 2, _MAX_POLL_S)
    except BaseException as exc:
        _release_during(exc, lease)
        raise


def _take_ticket(model: str, purpose: str, ttl_ms: int) -> Lease:
    from mlflow.exceptions import MlflowException

    name = names.lease_name(model)
    holder = uuid.uuid4().hex
    tags = {
        "state": OPEN, "holder": holder, "host": socket.gethostname(), "pid": str(os.getpid()),
        "user": getpass.getuser(), "purpose": purpose, "ttl_ms": str(ttl_ms),
    }  # fmt: skip
    c = tracking.client()
    with tracking.registry_errors(f"take a lease ticket of {name!r}"):
        for _ in range(2):
            try:
                # await_creation_for=0: a ticket has no files to wait for (it would cost a request)
                mv = c.create_model_version(name, SOURCE, tags=tags, description=f"champion lease ticket: {purpose}", await_creation_for=0)
                break
            except MlflowException as exc:
                # MLflow's basic-auth server checks permission before existence: a user's first ticket
                # on a queue that does not exist yet is refused (403), not "not found".
                if not (tracking.is_not_found(exc) or exc.error_code == "PERMISSION_DENIED"):
                    raise
                try:  # the model's first lease: make the queue (another process may be making it too)
                    c.create_registered_model(name, tags={LEASE_TAG: model}, description=f"lease tickets of {model!r} (champion)")
                except MlflowException as again:
                    if again.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    if exc.error_code == "PERMISSION_DENIED":  # the queue exists: the refusal was real
                        raise exc from None
        else:
            raise ChampionError(f"registered model {name!r} vanished while a lease ticket was being taken; run the step again")
    lease = Lease(model, str(mv.version), holder, ttl_ms, int(mv.last_updated_timestamp), purpose)
    lease.start_heartbeat()  # a waiting ticket is renewed too, or it would be passed over as abandoned
    return lease


def _live_tickets_below(lease: Lease) -> list:
    """The open tickets below `lease`'s that have not expired, lowest first; expired ones are closed."""
    with tracking.registry_errors(f"read the lease queue of {lease.name!r}"):
        now = lease.now_ms()  # taken before the read: a ticket renewed after it is not judged by it
    found = tracking.model_versions(f"name = '{_quote(lease.name)}' AND tags.state = '{OPEN}'", f"read the lease queue of {lease.name!r}")
    mine = int(lease.ticket)
    live = []
    for mv in sorted(found, key=lambda v: int(v.version)):
        if int(mv.version) >= mine:
            continue
        if mv.tags.get("holder") == lease.holder:
            # A duplicate of our own ticket (a request retried after the store had answered): not a rival.
            _close(lease.name, mv.version, RELEASED)
        elif now - int(mv.last_updated_timestamp) > int(mv.tags.get("ttl_ms", lease.ttl_ms)):
            _close(lease.name, mv.version, EXPIRED, by=lease.ticket)
        else:
            live.append(mv)
    return live


def _close(name: str, version: str, state: str, by: str | None = None) -> None:
    c = _registry()
    with tracking.registry_errors(f"mark lease ticket {version} of {name!r} {state}"):
        if by is not None:
            c.set_model_version_tag(name, version, "expired_by_ticket", by)
        c.set_model_version_tag(name, version, "state", state)


def _registry():
    """MLflow's registry client. MlflowClient reads the registered model before each version update
    or tag (to refuse prompts): a request a lease's own model never needs, which would make an
    uncontended lease cost 10 requests instead of 6."""
    return tracking.client()._get_registry_client()


def _quote(value: str) -> str:
    return value.replace("'", "\\'")
