"""The process's environment with the Redis secrets kept out of it, and in this process's memory only.

Whatever a process has in ``os.environ`` every process it starts inherits: a fork horse, a spawn
horse, each subprocess a job starts, and the worker itself after a reload's re-execution. And what
it was started with stays readable in ``/proc/<pid>/environ`` for its whole life, whatever it
removes afterwards. So a Redis or Sentinel password never goes into ``os.environ``:

* ``environment`` is the mapping the configuration reads and the env files are applied to: the
  secret-bearing variables (those marked ``secret`` in ``variables``, and REDIS_URL when it holds a
  password) live in its private part, everything else in ``os.environ``; a REDIS_URL goes there
  without its password (a job may still read host and database from it).
* ``run`` starts with ``scrub``: a worker whose environment came with a secret (a drop-in's
  ``Environment=``, a shell) re-executes itself once, at once, without it, so that its own
  ``/proc/<pid>/environ`` holds none either.
* Across an execution (that re-execution, a reload's, a spawn horse) the secrets travel in an
  anonymous memory file (memfd) the new program inherits, whose descriptor number alone is in its
  environment (``HANDOVER_VAR``); it reads and closes it first thing (``receive``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from urllib.parse import parse_qsl, urlencode, urlsplit

from .variables import VARIABLES

HANDOVER_VAR = "RQ_WORKER_SERVICE_SECRETS_FD"
"""The descriptor of the memfd with the secrets a process hands to the program it executes."""

URL_VARIABLE = "REDIS_URL"
SECRET_VARIABLES = frozenset(var.name for var in VARIABLES if var.secret)


def secret_query_key(key: str) -> bool:
    """A query parameter of a Redis URL that carries a secret (redis-py passes ``password=`` and any
    other unknown key, such as ``ssl_password=``, to the connection)."""
    return "password" in key.lower()


def public_url(url: str) -> str | None:
    """``url`` without any password (userinfo or query), or None when it cannot be taken apart."""
    try:
        parts = urlsplit(url)
        userinfo, at, host = parts.netloc.rpartition("@")
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return None
    user = userinfo.split(":", 1)[0]
    netloc = f"{user}@{host}" if at and user else host
    kept = urlencode([(k, v) for k, v in query if not secret_query_key(k)])
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{kept}" if kept else "")


def url_has_secret(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return bool(parts.password) or any(secret_query_key(k) for k, _ in parse_qsl(parts.query))
    except ValueError:
        return True  # not understood: treated as holding one (the configuration refuses it anyway)


def public_value(name: str, value: str) -> str | None:
    """What variable ``name`` may show in ``os.environ``: ``value``, a form without its secret, or
    None (nothing)."""
    if name in SECRET_VARIABLES:
        return None if value else value  # (an empty one holds nothing)
    if name == URL_VARIABLE and url_has_secret(value):
        return public_url(value)
    return value


class SecretEnvironment(MutableMapping[str, str]):
    """``os.environ`` (``public``) with the secret-bearing values kept aside (``private``): reading
    gives the full values, writing routes each to its side."""

    def __init__(self, public: MutableMapping[str, str] | None = None) -> None:
        self.public = os.environ if public is None else public
        self.private: dict[str, str] = {}

    def __getitem__(self, key: str) -> str:
        return self.private[key] if key in self.private else self.public[key]

    def __setitem__(self, key: str, value: str) -> None:
        shown = public_value(key, value)
        if shown == value:
            self.private.pop(key, None)
        else:
            self.private[key] = value
        if shown is None:
            self.public.pop(key, None)
        else:
            self.public[key] = shown

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.private.pop(key, None)
        self.public.pop(key, None)

    def __iter__(self) -> Iterator[str]:
        yield from self.public
        yield from (key for key in self.private if key not in self.public)

    def __len__(self) -> int:
        return len(set(self.public) | set(self.private))

    def absorb(self) -> bool:
        """Move the secrets ``public`` holds to the private side; True if there were any."""
        found = [key for key, value in self.public.items() if public_value(key, value) != value]
        for key in found:
            self[key] = self.public[key]
        return bool(found)

    def receive(self) -> None:
        """The secrets the process that executed this one handed over (``handover``), if any."""
        fd = self.public.pop(HANDOVER_VAR, None)
        if fd is None:
            return
        try:
            with open(int(fd), "rb", closefd=True) as f:  # read, and closed: no child inherits it
                secrets = json.loads(f.read())
        except (OSError, ValueError):
            return  # not ours after all (set by hand): the configuration then finds no password
        for key, value in secrets.items():
            self.private[key] = value


def handover(secrets: Mapping[str, str], env: MutableMapping[str, str]) -> int | None:
    """A memfd holding ``secrets`` that the next program this process executes (or spawns) inherits,
    its number put in ``env``; the caller closes it once that program runs. None when there is
    nothing to hand over."""
    if not secrets:
        env.pop(HANDOVER_VAR, None)
        return None
    fd = os.memfd_create("rq-worker-secrets", 0)  # no MFD_CLOEXEC: inherited across execve
    os.write(fd, json.dumps(dict(secrets)).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    env[HANDOVER_VAR] = str(fd)
    return fd


def scrub() -> None:
    """First thing in ``run``: a process started with a secret in its environment re-executes itself
    without it (same pid, same command line), the secret handed over; otherwise nothing happens.

    Signals that come meanwhile stay pending across the execution (``startup.block``) and reach the
    new process's start-up handlers."""
    environment.receive()
    if not environment.absorb():
        return
    from . import startup

    handover(environment.private, os.environ)
    startup.block()
    os.execv(sys.executable, sys.orig_argv)


environment = SecretEnvironment()
"""This process's environment, as the configuration reads it."""
