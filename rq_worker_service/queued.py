"""rq's writes, run by a script of ours only while a condition holds, in one step with its look.

rq's methods queue a step's writes on a pipeline (``Execution.create``, ``prepare_for_execution``, the
worker's state and heartbeat); where the service must commit them only under a condition (the id still
held, the execution still there, the worker not fenced) a WATCH, a read, MULTI and EXEC did it at three
or four commands more per job than a script that looks and writes at once. The pipeline is flattened
(``flatten``) and never executed; the script ends with ``run_flattened``'s Lua, which replays the commands.
"""

from __future__ import annotations

from typing import Any


def flatten(pipeline: Any) -> list[Any]:
    """The commands queued on ``pipeline``, each as its length then its words (encoded as redis-py would
    send them); the pipeline is emptied."""
    encode = pipeline.get_encoder().encode
    flat: list[Any] = []
    for args, _options in pipeline.command_stack:
        flat += [len(args), *(encode(arg) for arg in args)]
    pipeline.reset()
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
