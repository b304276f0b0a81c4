"""Environment files (``worker.env``, ``worker-<i>.env``, ``.env``): one merge, two precedences.

Who wins differs on purpose between the two callers, and ``merge`` takes it as an argument:

* ``run`` (``refresh_environment``): ``run --env-file PATH`` (the unit passes its files so, not as
  ``EnvironmentFile=``, whose values systemd would put in every process's environment, secrets
  included) applies them at start and again before each reload's re-exec, each file *replacing*
  what the environment holds, later files winning, as systemd does; then ``.env`` fills in only
  what is still unset. Keys the files set last time and no longer set are removed, so deleting a
  line takes effect too. The environment written to is ``secret_env.environment``: a password
  goes to its private side, never into ``os.environ``.
* the operator commands (``status``, ``job`` …; ``commands_environment``): run from a shell, where
  a variable the operator sets by hand (``REDIS_URL=… rq-worker-service status``) must win; so the
  environment comes first, then the workers' env file, then ``.env``, each only *filling in*: the
  same order as ``run`` below the environment, so the commands see what the workers see.

Either way the ``.env`` read is the one in ``RQ_APP_DIR`` when that is set (the worker runs there),
else the working directory's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from pathlib import Path

from dotenv import dotenv_values

from .config import ConfigError

KEYS_VAR = "RQ_WORKER_SERVICE_FILE_KEYS"


def read_values(path: Path) -> dict[str, str | None] | None:
    """The variables ``path`` sets; None when it does not exist. ConfigError, one line naming the file and
    the fix, for one that cannot be read or is not UTF-8 text (the line, never the bytes: it may hold a
    password)."""
    try:
        with path.open(encoding="utf-8") as f:
            return dotenv_values(stream=f)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except IsADirectoryError:
        raise ConfigError(str(path), None, "a directory, not an environment file: name the file of KEY=value "
                          "lines instead") from None
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot read it ({exc.strerror}); make it readable by the service's "
                          "user (e.g. SupplementaryGroups= with the file's group) or remove it") from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ConfigError(str(path), None, f"line {line} is not UTF-8 text; write the file in UTF-8 (e.g. iconv -f "
                          "latin1 -t utf-8) or remove the line") from None


def merge(env: MutableMapping[str, str], files: Iterable[Path], *, replace: bool) -> set[str]:
    """Apply each existing file of ``files`` in order onto ``env``; return the keys it set.

    ``replace=True``: a file's values replace what ``env`` holds (later files win).
    ``replace=False``: they only fill in keys ``env`` does not have yet (earlier sources win).
    """
    applied: set[str] = set()
    for path in files:
        values = read_values(path)
        if values is None:
            continue  # an optional file, as systemd's EnvironmentFile=-…
        for key, value in values.items():
            if value is not None and "\x00" in key + value:  # the environment cannot hold one (ValueError)
                raise ConfigError(str(path), None, f"{key!r} holds a NUL character; remove it")
            if value is not None and (replace or key not in env):
                env[key] = value
                applied.add(key)
    return applied


def app_dotenv(env: Mapping[str, str], default: Path) -> Path:
    """The ``.env`` that applies: the one in ``RQ_APP_DIR`` when that is set, else ``default``
    (the working directory's)."""
    app_dir = (env.get("RQ_APP_DIR") or "").strip()
    return Path(app_dir) / ".env" if app_dir else default


def refresh_environment(env_files: Sequence[str], dotenv: Path,
                        environ: MutableMapping[str, str] | None = None) -> None:
    """For ``run``: the unit's files replace, then ``.env`` (RQ_APP_DIR's, else ``dotenv``) fills in;
    keys dropped from them since the last time are removed. ``environ``: ``os.environ`` unless given
    (``run`` gives ``secret_env.environment``)."""
    env = os.environ if environ is None else environ
    for key in filter(None, env.get(KEYS_VAR, "").split(",")):
        env.pop(key, None)
    applied = merge(env, (Path(p) for p in env_files), replace=True)
    applied |= merge(env, [app_dotenv(env, dotenv)], replace=False)
    env[KEYS_VAR] = ",".join(sorted(applied))


def commands_environment(env_file: Path, dotenv: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """For the operator commands: environment > the workers' env file > ``.env`` (RQ_APP_DIR's, else
    ``dotenv``), so that from any directory they see what the workers see, unless told otherwise.

    A file the caller may not read (``worker.env`` is 0640 root:rq-worker) is skipped; the caller
    decides whether that is an error.
    """
    env = dict(os.environ if environ is None else environ)
    if os.access(env_file, os.R_OK):
        merge(env, [env_file], replace=False)
    merge(env, [app_dotenv(env, dotenv)], replace=False)
    return env
