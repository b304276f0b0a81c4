"""Exit statuses, one table for every command: the same failure exits with the same status everywhere.

The values are sysexits.h's (``os.EX_*``), because systemd's ``RestartPreventExitStatus=`` and
monitoring scripts key on them; the unit names 77 and 78 so that a mistake an operator must fix
never restarts in a loop. README.md and docs/operations.md list them.
"""

from __future__ import annotations

import os

OK = os.EX_OK
"""Stopped on request (warm, or cold after the shutdown limit / a second signal); a command succeeded."""
LOOP_ERROR = 1
"""The worker loop ended on an error that is logged just before; systemd restarts the instance.
A failed operator command (unknown job id, nothing to requeue) uses it too, as most tools do."""
USAGE = os.EX_USAGE
"""Command-line arguments that do not fit together."""
UNAVAILABLE = os.EX_UNAVAILABLE
"""Redis cannot be reached (at start after RQ_REDIS_STARTUP_WAIT, or by an operator command)."""
CANT_CREATE = os.EX_CANTCREAT
"""An output file (``status --output``) cannot be written."""
TEMPFAIL = os.EX_TEMPFAIL
"""Try again: another live process on this host already runs this worker name, or this worker was
fenced while it was silent (its jobs were re-queued elsewhere) and must rejoin as a new member."""
NOPERM = os.EX_NOPERM
"""Redis refused the credentials: fix them, then start again (not restarted by systemd)."""
CONFIG = os.EX_CONFIG
"""Invalid configuration; the one error line names the variable (not restarted by systemd)."""
