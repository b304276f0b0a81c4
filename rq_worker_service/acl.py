"""The least-privilege Redis ACL rule for workers, the operator commands, the autoscaler and the enqueue helper.

One rule serves all of them: they touch the same keys (everything rq and this service keep starts
with ``RQ_KEY_PREFIX:``) and the same channel (rq's worker commands, ``RQ_KEY_PREFIX:pubsub:…``).
Commands are granted by category, minus ``@dangerous`` (FLUSHALL, KEYS, CONFIG, CLIENT LIST/KILL,
DEBUG …) and the few commands outside it that reach beyond the prefix (``@scripting``, whose FUNCTION
FLUSH/LOAD/DELETE act on the whole server; SCAN and RANDOMKEY), plus the scripts and the few
dangerous-marked commands the service needs; rq's own commands change between releases, its data
types do not. ``rq-worker-service acl`` prints it for the configured prefix.

The default rule grants nothing that acts on the whole server or on other clients: a job runs with
the worker's connection, and on a shared Redis any grant of the rule is every job's. Fencing does
not need CLIENT KILL (a fenced worker stops itself before it moves a job, ``fencing``); the variant
with CLIENT LIST and CLIENT KILL (``allow_client_kill``) is the operator's explicit choice.
"""

from __future__ import annotations

import re

from .keys import everything

CATEGORIES = ("-@all", "+@read", "+@write", "+@transaction", "+@connection", "-@dangerous")
"""Key-bound reads and writes (lists, hashes, sorted sets, streams …), MULTI/EXEC/WATCH, and
PING/HELLO/WAIT/CLIENT SETNAME; then nothing marked dangerous."""
DENIED = (
    "-@scripting",  # FUNCTION FLUSH/LOAD/DELETE are @write, not @dangerous, and change every client's
    # functions (Redis 7); the scripts the service runs are granted one by one below
    "-scan", "-randomkey",  # @read, not @dangerous: they name keys outside the prefix (no key pattern binds them)
)
"""Commands of the granted categories that reach beyond the prefix; none of ours uses them."""
COMMANDS = (
    "+evalsha", "+eval", "+script|load", "+script|exists",  # rq's and fencing's Lua scripts
    "+subscribe", "+unsubscribe", "+publish",  # rq's worker command channel
    "+time",  # fencing deadlines in Redis server time
    "+info",  # rq reads the server version (INFO reads; it changes nothing)
)
CLIENT_KILL = ("+client|list", "+client|kill")
"""The opt-in (``acl --allow-client-kill``): a fencer closes a lost worker's connections at once. They
act on every client of the server (a job could disconnect them all), and fencing is safe without
them: the fenced worker stops itself (docs/operations.md, "Fencing without CLIENT KILL")."""

USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]*")
"""An ACL user name that means the same user in redis-cli's ``ACL SETUSER`` line, in a users.acl line
and in a REDIS_URL: users.acl splits its lines at blanks and has no quoting."""


def rule(key_prefix: str = "rq", *, allow_client_kill: bool = False) -> str:
    """The ACL rule (keys, channels, commands) for everything under ``key_prefix``."""
    scope = everything(key_prefix)
    extra = CLIENT_KILL if allow_client_kill else ()
    return " ".join(("resetkeys", f"~{scope}", "resetchannels", f"&{scope}", *CATEGORIES, *DENIED, *COMMANDS,
                     *extra))


def bad_user_name(user: str) -> str | None:
    """Why ``user`` cannot be printed as one ACL user for both redis-cli and users.acl; None if it can."""
    if USER_NAME.fullmatch(user):
        return None
    return (f"{user!r} is not a user name the printed command and a users.acl line agree on: use letters, digits "
            "and _ . : @ - only (no blanks, quotes, or the ACL rule characters > < ~ % & …)")


def setuser(user: str, key_prefix: str = "rq", *, allow_client_kill: bool = False) -> str:
    """``ACL SETUSER`` for redis-cli; the password stays the operator's to type."""
    problem = bad_user_name(user)
    if problem:
        raise ValueError(problem)
    return f"ACL SETUSER {user} reset on >YOUR-PASSWORD {rule(key_prefix, allow_client_kill=allow_client_kill)}"


_DENIED = re.compile(r"NOPERM|no permissions", re.IGNORECASE)


def denied(exc: BaseException) -> str | None:
    """The one-line message for a command Redis refused to our ACL user, or None if ``exc`` is not one."""
    if not _DENIED.search(str(exc)) or "WRONGPASS" in str(exc):
        return None
    return (f"Redis refused a command to this ACL user ({exc}); give the user the rule that "
            "'rq-worker-service acl' prints (README: ACL users)")
