"""The job the throughput benchmark runs: as small as a job gets, so the worker's overhead shows."""


def noop(i: int) -> int:
    return i
