"""``rq-worker-service autoscale``: the loop of rq-worker-autoscale.service.

Every RQ_AUTOSCALE_INTERVAL it looks (queues in Redis, instances through systemd's D-Bus API, the
memory left), asks ``autoscale.Scaler`` what to do, does it, and says so: each start or stop (and
each change in why it holds) is one journal line with its figures, the same state is in
``systemctl status`` (STATUS=) and, for ``rq-worker-service status`` on any host, in Redis.

Signal handlers only record a stop and wake the loop (a byte down a pipe); the loop acts. Stopping
the autoscaler leaves every instance running: they are ordinary units. Which instances it started
is kept in its state directory, so that after a restart it still never stops one it did not start.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType

from . import exits, journal, keys
from .autoscale import MIB, RUNNING_STATES, Decision, Instance, Limits, Observation, Scaler, unit_name
from .autoscale_report import AutoscalerReport, ReportedInstance
from .config import ConfigError, Settings, load_settings, read, worker_name
from .envfiles import commands_environment
from .notify import Notifier
from .systemd_units import Units, UnitsError

log = logging.getLogger("rq_worker_service.autoscale")

STARTED_FILE = "started"
"""In the state directory: the instance numbers this autoscaler started, one per line."""
POLKIT_RULE = "/usr/share/polkit-1/rules.d/60-rq-worker-service.rules"


def limits_from(env: dict[str, str]) -> Limits:
    """The RQ_AUTOSCALE_* settings, validated like every other variable; raises ConfigError."""
    limits = Limits(minimum=read(env, "RQ_AUTOSCALE_MIN"), maximum=read(env, "RQ_AUTOSCALE_MAX"),
                    max_wait=read(env, "RQ_AUTOSCALE_MAX_WAIT"),
                    jobs_per_instance=read(env, "RQ_AUTOSCALE_JOBS_PER_INSTANCE"),
                    up_cooldown=read(env, "RQ_AUTOSCALE_UP_COOLDOWN"),
                    down_cooldown=read(env, "RQ_AUTOSCALE_DOWN_COOLDOWN"),
                    stop_others=read(env, "RQ_AUTOSCALE_STOP_OTHERS"),
                    memory_reserve=read(env, "RQ_AUTOSCALE_MEMORY_RESERVE") * MIB)
    if limits.maximum < limits.minimum:
        raise ConfigError("RQ_AUTOSCALE_MAX", str(limits.maximum),
                          f"a number of instances at least RQ_AUTOSCALE_MIN={limits.minimum}")
    return limits


def memory_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The kernel's estimate of memory available for new work (MemAvailable), in bytes."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class Autoscaler:
    """One host's autoscaler: observe, decide, act, report."""

    def __init__(self, connection, units: Units, limits: Limits, queues: Sequence[str], host: str,
                 state_dir: Path, clock: Callable[[], float] = time.monotonic,
                 memory: Callable[[], int | None] = memory_available) -> None:
        from rq import Queue
        from rq.worker import BaseWorker

        self.connection = connection
        self.units = units
        self.limits = limits
        self.queues = [Queue(name, connection=connection) for name in queues]
        self.host = host
        self.scaler = Scaler(limits, clock)
        self.memory = memory
        self._worker_key = BaseWorker.redis_worker_namespace_prefix + worker_name("{}", host)
        self._own_workers = BaseWorker.redis_worker_namespace_prefix + host + "."
        self._started_file = state_dir / STARTED_FILE
        self.ours = self._load_ours()
        self.seen: Observation | None = None
        self.last: Decision | None = None
        self.last_at: float | None = None
        self._said = ""
        self.holding = ""
        """Why it neither starts nor stops now ('' when there is nothing to say)."""

    # -- which instances are ours -----------------------------------------------------------------

    def _load_ours(self) -> set[int]:
        try:
            return {int(line) for line in self._started_file.read_text().split() if line.isdigit()}
        except OSError:
            return set()

    def _save_ours(self) -> None:
        tmp = self._started_file.with_suffix(".tmp")
        try:
            self._started_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text("".join(f"{n}\n" for n in sorted(self.ours)))
            os.replace(tmp, self._started_file)
        except OSError as exc:
            log.error("cannot record the instances it started in %s (%s): after a restart it will take them for "
                      "instances started by hand, and not stop them", self._started_file, exc.strerror)

    # -- one look ----------------------------------------------------------------------------------

    def _busy(self, numbers: list[int]) -> dict[int, bool]:
        """rq's own record of each instance's worker: busy, or not registered (yet): not idle."""
        from rq.utils import as_text
        pipe = self.connection.pipeline(transaction=False)
        for number in numbers:
            pipe.hget(self._worker_key.format(number), "state")
        states = pipe.execute()
        return {n: s is None or as_text(s) != "idle" for n, s in zip(numbers, states, strict=True)}

    def _elsewhere(self) -> int:
        """Live rq workers of other hosts that take from the watched queues (rq's per-queue sets,
        whose members may outlive a dead worker's key: only keys that still exist count)."""
        from rq.worker_registration import get_keys

        keys = {key for q in self.queues for key in get_keys(q)}
        others = [k for k in keys if not k.startswith(self._own_workers)]
        if not others:
            return 0
        pipe = self.connection.pipeline(transaction=False)
        for key in others:
            pipe.exists(key)
        return sum(pipe.execute())

    def observe(self) -> Observation:
        from .status.collect import oldest_age

        units = self.units.instances()
        loaded = {u.number for u in units if u.active_state != "inactive"}
        if self.ours - loaded:  # stopped since (by us or by hand): no longer ours
            self.ours &= loaded
            self._save_ours()
        states = {u.number: "activating" if u.restarting else u.active_state for u in units}
        running = [n for n, state in states.items() if state in RUNNING_STATES]
        busy = self._busy(running) if running else {}
        now = datetime.now().astimezone()
        ages = [age for q in self.queues if (age := oldest_age(self.connection, q, now)) is not None]
        available = self.memory()
        if units:
            limited = self.units.slice_memory_available(units[0].number)
            if limited is not None:
                available = limited if available is None else min(available, limited)
        return Observation(
            queued=sum(q.count for q in self.queues), oldest=max(ages) if ages else None,
            instances=tuple(Instance(u.number, states[u.number], busy.get(u.number, True), u.number in self.ours,
                                     u.memory) for u in units),
            available=available, elsewhere=self._elsewhere())

    # -- acting on it ------------------------------------------------------------------------------

    def step(self) -> Decision:
        self.seen = self.observe()
        decision = self.scaler.decide(self.seen)
        if decision.step:
            holder = self._claim_step()
            if holder != self.host:
                decision = Decision(decision.figures, f"{decision.reason}, but {holder} stepped up in this cool-down")
        self.holding = "" if decision.acts else decision.reason
        if decision.acts:
            log.info("%s", decision)
            self._act(decision)
            self.last, self.last_at = decision, time.time()
        else:
            if decision.reason and decision.reason != self._said:
                log.info("%s", decision)  # a hold is said once, until its reason changes or goes
            self._said = decision.reason
        self.publish()
        return decision

    def _claim_step(self) -> str:
        """One host at a time steps up for a backlog they share: the first to claim the step holds it
        for the up cool-down; the others see its work before they decide again. Returns the holder."""
        from rq.utils import as_text

        key, ttl = keys.autoscale_step(), int(self.limits.up_cooldown * 1000)
        if self.connection.set(key, self.host, nx=True, px=ttl):
            return self.host
        holder = self.connection.get(key)
        holder = None if holder is None else as_text(holder)
        if holder in (None, self.host):  # gone meanwhile, or our own from the last step
            self.connection.set(key, self.host, px=ttl)
            return self.host
        return holder

    def _act(self, decision: Decision) -> None:
        for number in decision.start:
            try:
                self.units.start(number)
            except UnitsError as exc:
                log.error("cannot start %s: %s%s", unit_name(number), exc, _access_hint(str(exc)))
                continue
            self.ours.add(number)
        self._save_ours()
        for number in decision.stop:
            if self._busy([number])[number]:
                log.info("rq-worker@%d took a job since; not stopping it", number)
                continue
            try:
                self.units.stop(number)  # a warm stop: were a job taken meanwhile, it finishes first
            except UnitsError as exc:
                log.error("cannot stop %s: %s%s", unit_name(number), exc, _access_hint(str(exc)))

    # -- reporting ---------------------------------------------------------------------------------

    def _counts(self) -> tuple[int, int]:
        """Instances running, and how many of them are busy, in the last look."""
        running = [i for i in self.seen.instances if i.running] if self.seen else []
        return len(running), sum(1 for i in running if i.busy)

    def report(self) -> AutoscalerReport:
        """What ``rq-worker-service status`` shows about this autoscaler."""
        seen = self.seen
        running, busy = self._counts()
        instances = seen.instances if seen else ()
        return AutoscalerReport(
            host=self.host, at=time.time(), limits=self.limits, queues=tuple(q.name for q in self.queues),
            instances=tuple(ReportedInstance(i.number, i.state, i.busy, i.ours) for i in instances),
            running=running, busy=busy, queued=seen.queued if seen else None, oldest=seen.oldest if seen else None,
            available=seen.available if seen else None, instance_memory=self.scaler.instance_memory,
            last_decision=str(self.last) if self.last else None, last_decision_at=self.last_at, holding=self.holding)

    def publish(self) -> None:
        self.connection.hset(keys.autoscalers(), self.host, self.report().to_json())

    def withdraw(self) -> None:
        self.connection.hdel(keys.autoscalers(), self.host)

    def summary(self) -> str:
        """STATUS= for ``systemctl status rq-worker-autoscale``."""
        running, busy = self._counts()
        text = (f"{running} instances ({busy} busy; min {self.limits.minimum}, max {self.limits.maximum}), "
                f"{self.seen.queued if self.seen else None} queued")
        return text + (f"; last: {self.last}" if self.last else "")


def _access_hint(message: str) -> str:
    if "AccessDenied" in message or "InteractiveAuthorizationRequired" in message:
        return (f" (systemd refused this user: the package's polkit rule {POLKIT_RULE} grants start and stop of "
                "rq-worker@*.service to the user rq-worker-autoscale; is polkitd installed and the rule in place?)")
    return ""


class _Stop:
    """SIGTERM/SIGINT: recorded, and the loop's wait woken through a pipe (the handler does no more)."""

    def __init__(self) -> None:
        self.requested = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        try:
            os.write(self._write, b"x")
        except BlockingIOError:
            pass

    def wait(self, seconds: float) -> None:
        if not self.requested:
            select.select([self._read], [], [], seconds)


def _configure(env_file: str) -> tuple[Settings, Limits, tuple[str, ...], float]:
    """The workers' own configuration (the same files, the same Redis) and the RQ_AUTOSCALE_* settings."""
    if Path(env_file).exists() and not os.access(env_file, os.R_OK):
        raise ConfigError("--env-file", None, f"cannot read {env_file}: give this user read access (the unit "
                          "adds it to the group rq-worker, which owns /etc/rq-worker/worker.env)")
    env = commands_environment(Path(env_file), Path.cwd() / ".env")
    settings = load_settings(env)
    queues = read(env, "RQ_AUTOSCALE_QUEUES") or settings.queues
    return settings, limits_from(env), queues, read(env, "RQ_AUTOSCALE_INTERVAL")


def run(env_file: str) -> int:
    """Run until stopped; the exit status follows ``exits`` (78: fix the configuration first)."""
    journal.setup_logging("INFO")
    notifier = Notifier()
    try:
        settings, limits, queues, interval = _configure(env_file)
    except ConfigError as exc:
        return notifier.fail(f"configuration error: {exc}", exits.CONFIG, errno.EINVAL)
    keys.export(settings.key_prefix)
    import redis

    from .acl import denied
    from .connection import REDIS_ERRORS, RedisAuthError, RedisNoSuchDatabase, make_connection, ping

    units = Units()
    try:
        if os.geteuid() != 0 and not units.polkit_present():
            return notifier.fail("polkitd is not installed, and without it systemd lets only root start and stop "
                                 "units: apt-get install polkitd (the package's rule then grants this user "
                                 "rq-worker@*.service)", exits.CONFIG, errno.EACCES)
    except UnitsError as exc:
        return notifier.fail(f"cannot reach systemd on the system bus: {exc}", exits.UNAVAILABLE, errno.ECONNREFUSED)
    state_dir = Path(os.environ.get("STATE_DIRECTORY", "/var/lib/rq-worker-autoscale").split(":")[0])
    host = socket.gethostname()
    connection = make_connection(settings.redis, settings.key_prefix, f"{host}.rq-worker-autoscale")
    try:
        ping(connection, settings.redis)
    except RedisAuthError as exc:
        return notifier.fail(str(exc), exits.NOPERM, errno.EACCES)
    except RedisNoSuchDatabase as exc:
        return notifier.fail(f"configuration error: {exc}", exits.CONFIG, errno.EINVAL)
    except REDIS_ERRORS:
        pass  # Redis may come later: the loop holds until it answers, and says so
    scaler = Autoscaler(connection, units, limits, queues, host, state_dir)
    stop = _Stop()
    log.info("Autoscaling rq-worker@ instances on %s between %d and %d for queues %s on Redis %s (oldest job < "
             "%gs, ≤ %d queued per instance; cool-downs %gs up, %gs down)", scaler.host, limits.minimum,
             limits.maximum, ", ".join(queues), settings.redis.display, limits.max_wait, limits.jobs_per_instance,
             limits.up_cooldown, limits.down_cooldown)
    notifier.ready("starting")
    trouble = ""
    while not stop.requested:
        try:
            scaler.step()
            if trouble:
                log.info("%s answers again", trouble)
            trouble = ""
        except REDIS_ERRORS as exc:
            if trouble != "Redis":
                log.warning("cannot reach Redis at %s (%s): holding, no instance started or stopped until it "
                            "answers", settings.redis.display, exc)
            trouble = "Redis"
        except redis.exceptions.NoPermissionError as exc:
            return notifier.fail(f"{denied(exc) or exc}; exiting", exits.NOPERM, errno.EACCES)
        except UnitsError as exc:
            if trouble != "systemd":
                log.warning("systemd did not answer (%s): holding until it does", exc)
            trouble = "systemd"
        notifier.watchdog()
        notifier.status(f"holding: {trouble} does not answer" if trouble else scaler.summary())
        stop.wait(interval)
    notifier.stopping("stopping; the instances keep running")
    try:
        scaler.withdraw()
    except REDIS_ERRORS:
        pass
    units.close()
    log.info("Stopped; the instances keep running")
    return exits.OK
