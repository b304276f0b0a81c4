"""Re-reading the unit's environment files, so that ``systemctl reload`` applies edited config.

systemd reads ``EnvironmentFile=`` only when it starts the process; a reload that re-executes us in
place would otherwise keep the old values. So ``run --env-file PATH`` (the unit passes the same
files) makes us apply those files ourselves before each re-exec, and ``.env`` in the working
directory too. Keys that the files set last time and no longer set are removed, so deleting a line
from a file takes effect as well.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping, Sequence
from pathlib import Path

from dotenv import dotenv_values

KEYS_VAR = "RQ_WORKER_SERVICE_FILE_KEYS"


def refresh_environment(env_files: Sequence[str], dotenv: Path,
                        environ: MutableMapping[str, str] | None = None) -> None:
    """Apply ``env_files`` (each overriding, like systemd) and then ``dotenv`` (never overriding)."""
    env = os.environ if environ is None else environ
    for key in filter(None, env.get(KEYS_VAR, "").split(",")):
        env.pop(key, None)
    applied: set[str] = set()
    for path in env_files:
        if Path(path).is_file():
            for key, value in dotenv_values(path).items():
                if value is not None:
                    env[key] = value
                    applied.add(key)
    if dotenv.is_file():
        for key, value in dotenv_values(dotenv).items():
            if value is not None and key not in env:
                env[key] = value
                applied.add(key)
    env[KEYS_VAR] = ",".join(sorted(applied))
