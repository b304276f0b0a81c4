"""The least-privilege Redis ACL rule for workers, the operator commands, the autoscaler and the enqueue helper.

One rule serves all of them: they touch the same keys (everything rq and this service keep starts
with ``RQ_KEY_PREFIX:``) and the same channel (rq's worker commands, ``RQ_KEY_PREFIX:pubsub:…``).
Commands are granted by category, minus ``@dangerous`` (FLUSHALL, KEYS, CONFIG SET, DEBUG …), plus
the few dangerous-marked ones the service uses; rq's own commands change between releases, its
data types do not. ``rq-worker-service acl`` prints it for the configured prefix.
"""

from __future__ import annotations

import re

from .keys import everything

CATEGORIES = ("-@all", "+@read", "+@write", "+@transaction", "+@connection", "-@dangerous")
"""Key-bound reads and writes (lists, hashes, sorted sets, streams …), MULTI/EXEC/WATCH, and
PING/HELLO/WAIT/CLIENT SETNAME; then nothing marked dangerous."""
COMMANDS = (
    "+evalsha", "+eval", "+script|load", "+script|exists",  # rq's and fencing's Lua scripts
    "+subscribe", "+unsubscribe", "+publish",  # rq's worker command channel
    "+time",  # fencing deadlines in Redis server time
    "+info",  # rq reads the server version
)
OPTIONAL = {
    "+client|list": "fencing: find a lost worker's connections",
    "+client|kill": "fencing: close them (without both it still re-queues, and warns once)",
    "+config|get": "the start-up warning when Redis keeps nothing on disk",
}
"""Granted by the rule; without them the service works and says once what it skipped."""


def rule(key_prefix: str = "rq") -> str:
    """The ACL rule (keys, channels, commands) for everything under ``key_prefix``."""
    scope = everything(key_prefix)
    return " ".join(("resetkeys", f"~{scope}", "resetchannels", f"&{scope}", *CATEGORIES, *COMMANDS, *OPTIONAL))


def setuser(user: str, key_prefix: str = "rq") -> str:
    """``ACL SETUSER`` for redis-cli; the password stays the operator's to type."""
    return f"ACL SETUSER {user} reset on >YOUR-PASSWORD {rule(key_prefix)}"


_DENIED = re.compile(r"NOPERM|no permissions", re.IGNORECASE)


def denied(exc: BaseException) -> str | None:
    """The one-line message for a command Redis refused to our ACL user, or None if ``exc`` is not one."""
    if not _DENIED.search(str(exc)) or "WRONGPASS" in str(exc):
        return None
    return (f"Redis refused a command to this ACL user ({exc}); give the user the rule that "
            "'rq-worker-service acl' prints (README: ACL users)")
