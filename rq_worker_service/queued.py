"""rq's writes, run by a script of ours only while a condition holds, in one step with its look.

rq's methods queue a step's writes on a pipeline (``Execution.create``, ``prepare_for_execution``, the
worker's state and heartbeat, a job's end); where the service must commit them only under a condition
(the id still held, the execution still there, the worker not fenced, the job without dependents) a
WATCH, a read, MULTI and EXEC did it at three or four commands more per job than a script that looks and
writes at once. The pipeline's commands are taken (``taken``), compacted (``compact``), flattened
(``flatten``) and never executed; the script ends with ``run_flattened``'s Lua, which replays them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Command = tuple[Any, ...]
"""One queued command's words as rq passed them: its name, then its arguments."""


def taken(pipeline: Any) -> list[Command]:
    """The commands queued on ``pipeline``, which is emptied."""
    commands = [tuple(args) for args, _options in pipeline.command_stack]
    pipeline.reset()
    return commands


def compact(commands: list[Command]) -> list[Command]:
    """The same writes in fewer commands, for a batch Redis runs at once (a script): an HSET on a key
    joins the HSET before it on that key, and an EXPIRE of a key is left out when a later EXPIRE of it
    follows, as long as no command in between names that key. rq writes a job's status alone right
    before the whole hash that carries it, and the worker's heartbeat after its state; each such pair
    costs Redis one command, not two, and leaves the same data (the later field and TTL win either way).
    An EXPIRE that deletes (a TTL of 0 or less) or carries options is kept."""
    out: list[Command] = []
    for command in commands:
        name = str(command[0]).upper()
        if name == "HSET" and len(command) >= 4:
            earlier = _last_naming(out, command[1])
            if earlier is not None and str(out[earlier][0]).upper() == "HSET":
                out[earlier] = out[earlier] + command[2:]
                continue
        out.append(command)
    kept: list[Command] = []
    for index, command in enumerate(out):
        if _plain_expire(command) and any(_plain_expire(later) and later[1] == command[1] for later in
                                          _until_named(out[index + 1:], command[1])):
            continue
        kept.append(command)
    return kept


def _last_naming(commands: list[Command], key: Any) -> int | None:
    """The index of the last command that names ``key``, if any."""
    for index in range(len(commands) - 1, -1, -1):
        if key in commands[index][1:]:
            return index
    return None


def _until_named(commands: Iterable[Command], key: Any) -> list[Command]:
    """``commands`` up to and including the first one that names ``key``."""
    out: list[Command] = []
    for command in commands:
        out.append(command)
        if key in command[1:]:
            break
    return out


def _plain_expire(command: Command) -> bool:
    return len(command) == 3 and str(command[0]).upper() == "EXPIRE" and isinstance(command[2], int) \
        and command[2] > 0


def flatten(pipeline: Any, commands: list[Command] | None = None) -> list[Any]:
    """The commands queued on ``pipeline`` (or ``commands``, taken from it), compacted, each as its length
    then its words; the pipeline is emptied. The words are left as rq passed them: the script's call
    encodes each argument as the pipeline would have (an encoding here too was a third of this
    function's time, ≈10 µs per step of a job)."""
    if commands is None:
        commands = taken(pipeline)
    pipeline.reset()
    flat: list[Any] = []
    for args in compact(commands):
        flat.append(len(args))
        flat += args
    return flat


def run_flattened(first: int) -> str:
    """Lua that runs the flattened commands starting at ARGV[first]."""
    return f"""
local i = {first}
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
"""
