"""RQ_KEY_PREFIX and the names of the service's own Redis keys: owned here, asked for everywhere else.

rq reads RQ_KEY_PREFIX from the environment once, when it is first imported (``rq.defaults``), and
refuses there, with a traceback, a value it does not take: empty, with blanks around it, or with
characters other than letters, digits and ``_ . : - { }``. So the prefix is settled here *before* rq
is imported: read as the configuration reads every variable (blank means the default, blanks around
are trimmed), a bad one refused in one line (``ConfigError``: exit 78), and the value rq is to read
put into the environment; once rq is imported, ``check_imported`` tells whether it took this prefix.

The service keeps a few keys of its own beside rq's, under ``<prefix>:service:``. Their names are
stored data: changing one is a migration (workers of two versions would not see each other), so
each is spelled once, below, and a unit test pins them. They use the prefix rq was imported with,
the one every key of rq's in this process has.

Only the standard library and ``config`` (no rq) are imported at module level: it runs before rq.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from .config import ConfigError, read

VARIABLE = "RQ_KEY_PREFIX"


def from_environment(env: Mapping[str, str]) -> str:
    """The prefix ``env`` sets, validated and trimmed as ``config`` reads it ('rq' when unset or blank);
    raises ConfigError with the one line to show."""
    return read(env, VARIABLE)


def prepare_environment(env: MutableMapping[str, str] | None = None) -> None:
    """Before rq's first import: a prefix the environment holds, rewritten as the configuration reads it,
    so that rq's import reads the same value and cannot fail; raises ConfigError for a bad one.

    An unset prefix stays unset, so that ``run``'s ``.env`` may still fill it in (rq is then imported
    anew: ``service`` re-executes itself when ``check_imported`` fails)."""
    env = os.environ if env is None else env
    if VARIABLE in env:
        env[VARIABLE] = from_environment(env)


def export(prefix: str, env: MutableMapping[str, str] | None = None) -> None:
    """Give rq ``prefix`` (a validated one, ``Settings.key_prefix``): it reads it when first imported."""
    (os.environ if env is None else env)[VARIABLE] = prefix


def imported() -> str:
    """The prefix rq was imported with (imports rq if nothing has yet: call ``export`` first)."""
    from rq.defaults import RQ_KEY_PREFIX

    return RQ_KEY_PREFIX


def check_imported(prefix: str) -> None:
    """ConfigError unless rq was imported with ``prefix``: its keys would be elsewhere than ours, and a
    job enqueued there would wait where no worker looks."""
    rqs = imported()
    if prefix != rqs:
        raise ConfigError(VARIABLE, prefix, f"the prefix rq was imported with ({rqs!r}): set RQ_KEY_PREFIX in "
                          "the environment before the app imports rq")


def everything(prefix: str) -> str:
    """The glob of every key and pub/sub channel rq and the service use under ``prefix`` (the ACL's)."""
    return f"{prefix}:*"


def _service(name: str) -> str:
    return f"{imported()}:service:{name}"


def enqueued() -> str:
    """Counter the enqueue helper increments before WAIT: the write WAIT counts replicas from."""
    return _service("enqueued")


def autoscalers() -> str:
    """Hash: host name → its autoscaler's last report (``autoscale.AutoscalerReport`` as JSON)."""
    return _service("autoscalers")


def autoscale_step() -> str:
    """String: the host that stepped up last, for one up cool-down (``autoscaler``)."""
    return _service("autoscale-step")


def fencing_deadlines() -> str:
    """Sorted set: member worker name → Redis server time (s) by which it must beat again."""
    return _service("deadlines")


def fencing_beats() -> str:
    """Hash: member worker name → how many times it has beaten; fencers judge silence by it not moving."""
    return _service("beats")


def fencing_members() -> str:
    """Hash: member worker name → JSON {host, pid, queues, period, machine_id, boot_id}: what a fencer needs
    once rq's record is gone."""
    return _service("members")


def fencing_fenced() -> str:
    """Hash: worker name → JSON {by, at} while it is fenced; its next beat fails, its next start clears it."""
    return _service("fenced")


def fencing_history() -> str:
    """List, newest first: JSON of each fencing (worker, host, by, at, jobs), shown by ``status``."""
    return _service("fencings")


def held(worker_name: str) -> str:
    """List: the ids a worker popped and has not yet registered as started, oldest first (``held``)."""
    return _service(f"held:{worker_name}")


def holders() -> str:
    """Set: the workers that may hold popped ids (``held``): what a sweep looks at for a dead owner."""
    return _service("holders")


def cron_lease() -> str:
    """String ``"<token> <holder>"`` with a PX of the lease period: which scheduler may enqueue cron jobs
    (``cron.lease``); holder is ``<hostname>:<pid>``."""
    return _service("cron:lease")


def cron_token() -> str:
    """Counter INCRed at each acquisition of the cron lease: its fencing token, strictly increasing across
    holders."""
    return _service("cron:token")


def cron_last() -> str:
    """Hash: cron job name → the last slot handled (epoch seconds), written in the slot's own MULTI/EXEC."""
    return _service("cron:last")


def cron_jobs() -> str:
    """Hash: cron job name → JSON of its schedule and record (next, last slot, totals), kept by the leader."""
    return _service("cron:jobs")


def cron_schedulers() -> str:
    """Hash: holder → JSON of each running cron scheduler (role, since, beat, token, config)."""
    return _service("cron:schedulers")


def cron_handovers() -> str:
    """List, newest first (the last 20): JSON of each acquisition of the cron lease (at, holder, token, previous)."""
    return _service("cron:handovers")
