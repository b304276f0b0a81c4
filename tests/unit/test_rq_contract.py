"""What our code assumes about rq, redis-py and systemd-python beyond their documented API.

``OVERRIDES`` lists every method of theirs we override (checked: still there, same parameters);
``INTERNALS`` lists every internal we touch — private names, undocumented helpers, Redis hash fields,
texts and behaviour — with where we use it and the test that pins it (in this module,
``test_rq_contract_worker.py`` or ``test_rq_contract_redis.py``, by behaviour wherever rq's code
can be run on fakeredis). Guards below keep both lists complete: a new private name or import from
these libraries in ``rq_worker_service/`` fails here until it is listed and pinned. docs/operations.md
shows ``INTERNALS`` as a table (``python tests/unit/test_rq_contract.py`` prints it).

So raising a version pin breaks here, at once and legibly, rather than in a worker under systemd.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path
from typing import NamedTuple

import fakeredis
import pytest
import rq
import rq.executions
from redis.sentinel import Sentinel, SentinelManagedConnection
from rq import Queue
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.worker import BaseWorker, SpawnWorker, Worker

from rq_worker_service import rqcompat

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rq_worker_service"
OPERATIONS = ROOT / "docs" / "operations.md"
CONTRACT_TESTS = sorted(Path(__file__).parent.glob("test_rq_contract*.py"))


def _our_classes() -> list[type]:
    """Our subclasses of their classes, by the names the rest of the code knows them."""
    from rq_worker_service.connection import SentinelConnection, SentinelManager, SentinelSSLConnection
    from rq_worker_service.journal import journal_handler
    from rq_worker_service.scheduling import ServiceScheduler
    from rq_worker_service.worker_classes import WORKER_CLASSES

    return [*WORKER_CLASSES.values(), ServiceScheduler, SentinelConnection, SentinelSSLConnection, SentinelManager,
            type(journal_handler())]


def _journal_handler_class() -> type:
    from systemd.journal import JournalHandler

    return JournalHandler


OVERRIDES: dict[type, dict[str, str]] = {
    # their class: its methods we override (where in our code)
    BaseWorker: {
        "heartbeat": "worker.py: the tick around every pop",
        "maintain_heartbeats": "worker.py: the tick while the horse runs",
        "dequeue_job_and_maintain_ttl": "worker.py: rq's loop around the pop, with the pop into the held list",
        "prepare_execution": "worker.py: the registration also takes the id out of the held list",
        "bootstrap": "worker.py: signal handlers, READY=1",
        "teardown": "worker.py: announce a stop that ended the pop",
        "_start_scheduler": "worker.py/scheduling.py: the named scheduler",
        "main_work_horse": "worker.py: the horse dies with the worker",
        "handle_job_failure": "worker.py: interrupted jobs get the default retry",
        "handle_job_retry": "worker.py: a Redis error rq swallows as it records a Retry result's failure is raised "
                            "again (persisted)",
        "handle_job_success": "worker.py: a simple worker writes a job's end only while it is not marked fenced",
        "handle_execution_ended": "worker.py: the fault point job.performed; last_heartbeat left to the end's save",
        "set_state": "worker.py: notes the state Redis acknowledged (IDLE is not sent twice between jobs)",
        "perform_job": "worker_classes.py: the fault point horse.started in simple mode",
        "_install_signal_handlers": "worker.py: SIGHUP; SIGUSR1 in simple mode",
        "request_stop": "worker.py: record the stop in the Lifecycle",
        "request_force_stop": "worker.py: a second stop cuts, records, retries",
        "_shutdown": "worker.py: only the pop may be interrupted",
        "execute_job": "worker.py / worker_classes.py: job defaults, journal, status",
        "dequeue_timeout": "worker.py: a third of WatchdogSec",
        "check_for_suspension": "worker.py: the wait ticks (watchdog, beats, STATUS=); a failed GET waits for Redis",
        "run_maintenance_tasks": "worker.py: likewise; tried again on the next pass",
        "prepare_job_execution": "worker.py: the STARTED mark, only while our execution exists; again after an error",
        "_finalize_failure": "worker.py: a job taken back before it started here is not failed here",
        "_finalize_success": "worker.py: a Redis error while the end is written is not the job's failure",
        "clean_registries": "worker.py: registered, never started, expired: put back before rq's cleanup drops it",
        "wait_for_horse": "worker.py: a stop wakes the monitor at once",
        "kill_horse": "worker.py: a deliberate kill is not a crash",
    },
    Worker: {
        "wait_for_horse": "worker.py: a stop wakes the monitor at once",
        "kill_horse": "worker.py: a deliberate kill is not a crash",
        "fork_work_horse": "worker_classes.py: the horse's Redis connection, opened beforehand (handoff.py)",
    },
    SpawnWorker: {"fork_work_horse": "worker_classes.py: our spawn horse entry"},
    RQScheduler: {"start": "scheduling.py: remember the parent pid",
                  "work": "scheduling.py: die with the worker; rq's loop with a pause a stop ends",
                  "request_stop": "scheduling.py: a stop ends the pause"},
    SentinelManagedConnection: {"read_response": "connection.py: a reply left unread closes the connection"},
    Sentinel: {"discover_master": "connection.py: a one-line error when no primary is found"},
    _journal_handler_class(): {"emit": "journal.py: only the fields journald keeps"},
}

DIFFERENT_DEFAULTS = {("read_response", "disconnect_on_error"): False}
"""Defaults we change on purpose, with theirs: redis-py's Sentinel connection keeps a connection
whose reply was left unread (redis/redis-py#4292). Should theirs become ours, drop the override."""


def _params(func) -> list[tuple[str, object, object]]:
    func = func.fget if isinstance(func, property) else func
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]


def _ours_defining(name: str, base: type) -> list[tuple[type, object]]:
    """(our class, its attribute) for each of our classes derived from ``base`` that defines ``name``."""
    found = []
    for final in _our_classes():
        if issubclass(final, base):
            for klass in final.__mro__:
                if klass.__module__.startswith("rq_worker_service") and name in vars(klass):
                    found.append((klass, vars(klass)[name]))
                    break
    return found


@pytest.mark.parametrize("base, name", [(c, n) for c, names in OVERRIDES.items() for n in names])
def test_each_overridden_method_still_exists_with_the_same_parameters(base, name):
    where = OVERRIDES[base][name]
    assert hasattr(base, name), f"{base.__module__} no longer has {base.__name__}.{name}: our override ({where}) " \
                                "would never run"
    ours = _ours_defining(name, base)
    assert ours, f"nothing of ours overrides {base.__name__}.{name} any more: drop it from OVERRIDES"
    theirs = inspect.getattr_static(base, name)
    for klass, our in ours:
        assert isinstance(our, property) == isinstance(theirs, property), f"{klass.__name__}.{name}: property vs method"
        if isinstance(theirs, property):
            continue
        our_params, their_params = _params(our), _params(theirs)
        for i, (param, _kind, default) in enumerate(their_params):
            if (name, param) in DIFFERENT_DEFAULTS:
                assert default == DIFFERENT_DEFAULTS[(name, param)], (
                    f"{base.__name__}.{name}'s {param} now defaults to {default!r}: our override ({where}) can go")
                their_params[i] = our_params[i] if i < len(our_params) else their_params[i]
        assert our_params == their_params, (
            f"{base.__module__}.{base.__name__}.{name}{inspect.signature(theirs)} differs from "
            f"{klass.__name__}.{name}{inspect.signature(our)} ({where}): port the override")


def test_we_override_nothing_unlisted():
    """A new override must be added to OVERRIDES (and to docs/operations.md) to be checked."""
    listed = {(base, name) for base, names in OVERRIDES.items() for name in names}
    for final in _our_classes():
        theirs = [k for k in final.__mro__ if not k.__module__.startswith("rq_worker_service") and k is not object]
        for klass in final.__mro__:
            if not klass.__module__.startswith("rq_worker_service"):
                continue
            for name in vars(klass):
                owners = [t for t in theirs if name in vars(t)]
                if owners and not name.startswith("__"):
                    assert any((owner, name) in listed for owner in owners), (
                        f"{klass.__name__}.{name} overrides {owners[0].__name__}'s but is not in OVERRIDES")


def test_every_override_is_named_in_the_operations_guide():
    text = OPERATIONS.read_text()
    for names in OVERRIDES.values():
        for name in names:
            assert re.search(rf"`[\w.]*\b{name}\b", text), f"docs/operations.md does not name the override {name}"


class Internal(NamedTuple):
    names: tuple[str, ...]
    """What we rely on: a private name, an undocumented helper, a Redis hash field, a text or a behaviour."""
    used_in: str
    pinned_by: tuple[str, ...]


INTERNALS: list[Internal] = [
    # rq: the worker
    Internal(("rq.worker.BaseWorker._finalize_success",),
             "worker.py: a Redis error while a returned job's end is written is not the job's failure",
             ("test_a_returned_jobs_end_goes_through_finalize_success_inside_perform_jobs_try",)),
    Internal(("rq.worker.BaseWorker._finalize_failure",),
             "worker.py: a job taken back (its execution claimed) before its STARTED mark is not failed here",
             ("test_a_failure_rq_finalizes_goes_through_finalize_failure",)),
    Internal(("`handle_job_success()`: `WATCH` of the dependents, `move_dependents_to_ready()`, then `MULTI`, "
              "retried on `WatchError`",),
             "worker.py `handle_job_success`: where rq's step writes the end (a job with dependents), a simple "
             "worker watches the fencing marks and reads its own on rq's watched pipeline before its `MULTI`",
             ("test_the_end_of_a_job_is_one_transaction_watched_before_move_dependents_to_ready",)),
    Internal(("`handle_job_success()`'s writes, in order", "rq.job.Job._handle_success", "rq.rate_limit.release_slot"),
             "ending.py `write_success` repeats them for a job without dependents, in one script",
             ("test_the_end_we_repeat_is_still_rqs",)),
    Internal(("rq.job.Job._dependency_ids", "`Job.dependencies_key` written only for a job with `depends_on`",
              "`Job._handle_success`: the status HSET, then the whole hash with it"),
             "ending.py: the EXPIRE of a dependencies key that does not exist is left out; the status HSET joins "
             "the hash's (`queued.compact`)",
             ("test_a_job_without_depends_on_has_no_dependencies_key_and_its_hash_carries_its_status",)),
    Internal(("rq.worker.BaseWorker._state",), "worker.py `set_state`: rq's IDLE after a job kept in the process "
             "until the next pop finds the queues empty", ("test_rqs_get_state_reads_what_set_state_keeps",)),
    Internal(("rq.worker.Worker._stop_requested",),
             "worker.py `_shutdown`: take no new job; cleared when a stop ends the pop, as rq leaves it",
             ("test_rqs_loop_pops_with_dequeue_timeout_and_ends_on_a_stop",)),
    Internal(("rq.exceptions.StopRequested",), "worker.py: a stop ends the blocking pop; service.py",
             ("test_rqs_loop_pops_with_dequeue_timeout_and_ends_on_a_stop",)),
    Internal(("rq.worker.Worker._install_signal_handlers",), "worker.py, worker_classes.py: SIGHUP, SIGUSR1 added",
             ("test_rqs_signal_handlers_call_request_stop",
              "test_rqs_loop_pops_with_dequeue_timeout_and_ends_on_a_stop")),
    Internal(("rq.worker.Worker._start_scheduler",), "worker.py: the scheduler under the worker's name",
             ("test_rqs_loop_pops_with_dequeue_timeout_and_ends_on_a_stop",)),
    Internal(("rq.worker.Worker._shutdown",), "worker.py: overridden (rq's only caller, `request_stop`, is too)",
             ("test_each_overridden_method_still_exists_with_the_same_parameters",)),
    Internal(("rq.worker.Worker._shutdown_requested_date", "rq.utils.now"), "worker.py: announcing a warm stop",
             ("test_the_shutdown_date_we_set_is_the_one_rq_records",)),
    Internal(("rq.suspension.is_suspended", "rq.suspension.WORKERS_SUSPENDED"),
             "worker.py `check_for_suspension` (rq's look, which beats too), held.py: the take script and the "
             "put-back after a blocking pop read the flag `rq suspend` sets",
             ("test_rq_suspend_sets_the_flag_our_pop_reads_and_rqs_look_beats",)),
    Internal(("rq.worker.DequeueStrategy",), "service.py: RQ_DEQUEUE_STRATEGY given to rq's `work()`, whose "
             "`reorder_queues` our pop follows", ("test_rqs_dequeue_strategies_reorder_the_queues_our_pop_reads",)),
    Internal(("rq.worker.Worker.max_connection_wait_time",), "worker.py: a failing pop waits at most a tick",
             ("test_a_failing_pop_backs_off_up_to_max_connection_wait_time",)),
    Internal(("`heartbeat()` before the pop, `reorder_queues()` right after it", "rq.worker.Worker._ordered_queues",
              "rq.worker.WorkerStatus"),
             "worker.py `dequeue_job_and_maintain_ttl` repeats rq's loop around the pop, in rq's queue order",
             ("test_the_pop_is_between_a_heartbeat_and_reorder_queues_and_logs_the_job",
              "test_the_pop_loop_we_repeat_is_still_rqs")),
    Internal(("`prepare_execution`'s steps",), "worker.py `prepare_execution` repeats them, with the STARTED "
             "mark's worker heartbeat, in the script that takes the held id out",
             ("test_the_registration_we_repeat_is_still_rqs",)),
    Internal(("rq.utils.get_version",), "held.py: BLMOVE where rq's pop would use it (Redis 6.2+)",
             ("test_get_version_is_a_cached_triple",)),
    Internal(("rq.defaults.DEFAULT_FAILURE_TTL", "rq.utils.current_timestamp", "rq.utils.utcformat"),
             "held.py `quarantine`: a failed registry entry and `ended_at` as rq's FailedJobRegistry.add writes them",
             ("test_a_failed_registry_entry_is_scored_as_quarantine_scores_it",)),
    Internal(("rq's picked-up log line",), "journal.py `PICKED_UP`: the job's fields on rq's line",
             ("test_the_pop_is_between_a_heartbeat_and_reorder_queues_and_logs_the_job",)),
    Internal(("rq.job.Job.send_webhooks", "rq.webhook.Webhook", "rq.webhook.Webhook.send",
              "rq's log lines naming a webhook URL"),
             "webhooks.py `send` repeats `send_webhooks`'s loop (a rescue's failed end, one webhook at a time: "
             "aftermath.py names those left unsent), journal.py `WEBHOOK_LINES` (masked)",
             ("test_send_webhooks_sends_the_matching_ones_never_raises_and_logs_the_url_where_we_mask_it",)),
    Internal(("`job_monitoring_interval`, assigned in `__init__` and read for each wait",),
             "worker.py: a property; the monitor tick lands on the stop deadline",
             ("test_constructor_settings_and_horse_state", "test_an_early_alarm_in_the_horse_wait_is_a_monitor_tick")),
    Internal(("the SIGALRM monitor: an early alarm is a `maintain_heartbeats()` tick",),
             "parts/assembly.py `wake` (`setitimer` while in `wait_for_horse`)",
             ("test_an_early_alarm_in_the_horse_wait_is_a_monitor_tick",)),
    Internal(("rq.worker.Worker._horse_pid", "rq.worker.Worker._serializer_arg"), "worker_classes.py: spawn, handoff",
             ("test_constructor_settings_and_horse_state", "test_rqs_spawn_horse_does_what_ours_does",
              "test_fork_work_horse_keeps_the_horses_pid")),
    Internal(("rq.worker.Worker._is_horse", "`Worker.execution` (setter)"), "horse.py",
             ("test_constructor_settings_and_horse_state",)),
    Internal(("rq.worker.SHUTDOWN_SIGNAL", "kill-horse and stop-job commands and the hard timeout call `kill_horse()`"),
             "worker.py `kill_horse`: a deliberate kill is not a crash",
             ("test_an_operators_kill_goes_through_kill_horse",
              "test_rqs_hard_timeout_kills_the_horse_through_kill_horse")),
    Internal(("a BaseException raised in a simple worker's job is recorded as its failure",),
             "worker_classes.py: `JobInterrupted` cuts a simple worker's job",
             ("test_a_simple_workers_job_that_raises_a_base_exception_is_failed",)),
    Internal(("failure text \"Work-horse terminated unexpectedly\"",), "rqcompat.py `HORSE_DIED`, worker.py",
             ("test_a_horse_that_died_is_failed_with_the_text_we_recognise",)),
    Internal(("failure text \"Job was stuck in intermediate queue\"",), "rqcompat.py `STUCK_IN_INTERMEDIATE`",
             ("test_a_job_stuck_in_the_intermediate_list_is_failed_with_the_text_we_recognise",)),
    # rq: the spawn horse
    Internal(("rq.worker.SpawnWorker._dump_worker_config",), "worker_classes.py (encodes), horse.py (decodes)",
             ("test_dump_worker_config_is_what_our_spawn_horse_unpacks",)),
    Internal(("rq's spawn horse source and environment",), "horse.py repeats its steps",
             ("test_rqs_spawn_horse_does_what_ours_does",)),
    Internal(("rq.serializers.resolve_serializer", "rq.serializers.Serializer"),
             "classes.py: RQ_SERIALIZER resolved as `rq worker --serializer` resolves it",
             ("test_serializer_names_resolve_as_rqs_serializer_option_resolves_them",)),
    Internal(("rq.executions.Execution._job",), "horse.py, prefork.py",
             ("test_an_execution_given_its_job_does_not_fetch_it_again",)),
    Internal(("rq.job.UNEVALUATED", "a job's call serialized in `_data`, read into `_func_name`, `_instance`, "
              "`_args`, `_kwargs` when first used"), "prefork.py `pack`, `restore`: the job handed to a spare horse",
             ("test_a_fetched_jobs_call_waits_in_its_data_until_read",)),
    # rq: records, fields and keys
    Internal(("worker hash fields `pid`, `hostname`, `queues`, `death`",), "recovery.py: the predecessor's record",
             ("test_the_worker_record_has_the_fields_recovery_status_and_the_autoscaler_read",)),
    Internal(("worker hash field `state`",), "autoscaler.py: idle instances",
             ("test_the_worker_record_has_the_fields_recovery_status_and_the_autoscaler_read",)),
    Internal(("worker hash field `version`",), "rqcompat.py `mixed_rq_workers`: another rq major on the same queues",
             ("test_the_worker_record_has_the_fields_recovery_status_and_the_autoscaler_read",)),
    Internal(("worker hash fields `successful_job_count`, `failed_job_count`",),
             "parts/reporting.py `Counters`: counts, carried over reloads",
             ("test_the_worker_record_has_the_fields_recovery_status_and_the_autoscaler_read",)),
    Internal(("worker key TTL = heartbeat interval + 60 s",), "status/collect.py `HEARTBEAT_SLACK`: stale workers",
             ("test_the_worker_record_has_the_fields_recovery_status_and_the_autoscaler_read",)),
    Internal(("job hash field `enqueued_at`", "rq.utils.utcparse"),
             "status/collect.py `oldest_age` (and the autoscaler)",
             ("test_the_job_fields_we_read_and_write_directly",)),
    Internal(("job hash field `status`", "rq.utils.as_text"), "orphans.py, client.py",
             ("test_the_job_fields_we_read_and_write_directly",)),
    Internal(("job hash fields `timeout`, `failure_ttl`",), "recovery.py `apply_job_defaults` writes them",
             ("test_the_job_fields_we_read_and_write_directly",)),
    Internal(("job hash field `worker_name`", "execution hash field `worker_name`"), "recovery.py `started_executions`",
             ("test_the_job_fields_we_read_and_write_directly",
              "test_executions_are_registered_by_composite_key_before_the_horse")),
    Internal(("started registry entry `<job id>:<execution id>`", "rq.utils.parse_composite_key",
              "rq.executions.Execution.from_composite_key"), "recovery.py, orphans.py, rqcompat.py",
             ("test_executions_are_registered_by_composite_key_before_the_horse",)),
    Internal(("a queue is a list popped from the left", "registries are sorted sets"),
             "status/collect.py (`LINDEX 0`, `ZCARD`), orphans.py (`LPUSH`), jobs.py `cleanup` (`ZCARD`)",
             ("test_a_queue_is_a_list_popped_from_the_left_and_registries_are_sorted_sets",)),
    Internal(("rq.intermediate_queue.IntermediateQueue",), "rqcompat.py, orphans.py: the intermediate list, first-seen",
             ("test_executions_are_registered_by_composite_key_before_the_horse",
              "test_a_job_stuck_in_the_intermediate_list_is_failed_with_the_text_we_recognise")),
    Internal(("rq.worker.BaseWorker.redis_worker_namespace_prefix", "rq.worker_registration.REDIS_WORKER_KEYS",
              "rq.worker_registration.WORKERS_BY_QUEUE_KEY", "rq.worker_registration.get_keys"),
             "rqcompat.py, recovery.py, autoscaler.py, horse.py",
             ("test_worker_keys_and_registrations_are_where_recovery_and_the_autoscaler_look",)),
    Internal(("rq.defaults.RQ_KEY_PREFIX",),
             "read from the environment when rq is imported: keys.py sets it before and checks it after",
             ("test_rq_reads_its_key_prefix_from_the_environment_when_imported",)),
    # rq: failing and requeueing from outside a worker
    Internal(("rq.job.Job._handle_failure",), "recovery.py `settle_interrupted`",
             ("test_handle_failure_records_the_failure_as_a_worker_would",)),
    Internal(("rq.job.Job.retry", "rq.job.Job.should_retry", "rq.job.Job.retry_intervals"),
             "recovery.py `apply_default_retry`, `settle_interrupted`",
             ("test_a_retry_is_taken_as_recovery_sets_it_up",)),
    Internal(("rq.job.Job.get_retry_interval", "rq.job.Job.enqueue_at_front_on_retry", "rq.queue.Queue.schedule_job"),
             "rqcompat.py `retry_in`: `Job.retry` with every write in the pipeline",
             ("test_retry_in_is_rqs_retry_with_every_write_in_the_pipeline",)),
    Internal(("ending an execution writes the job hash or deletes the execution hash with the entry's removal",),
             "recovery.py `claim` watches only those two",
             ("test_every_end_of_an_execution_writes_what_a_rescue_watches",)),
    Internal(("rq.queue.Queue.enqueue_dependents",), "recovery.py `after_claim`",
             ("test_dependents_of_a_job_failed_from_outside_are_enqueued",)),
    Internal(("rq.results.Result.create_failure",), "recovery.py `record_interruption`",
             ("test_a_failure_result_can_be_recorded_for_a_retried_job",)),
    Internal(("rq.queue.Queue._enqueue_job",), "rqcompat.py `requeue_now`",
             ("test_enqueue_job_puts_a_job_back_at_the_front_untouched",
              "test_requeue_now_is_a_retry_without_its_interval")),
    Internal(("rq.callbacks.execute_failure_callback", "rq.rate_limit.release_slot"),
             "recovery.py `after_claim`, aftermath.py", ("test_the_helpers_recovery_calls_around_a_rescue",)),
    Internal(("rq.timeouts.TimerDeathPenalty", "rq.timeouts.JobTimeoutException"),
             "aftermath.py `ThreadDeathPenalty`: the callback's time limit off the main thread",
             ("test_the_timer_death_penalty_raises_in_its_thread_the_class_it_is_given",)),
    Internal(("rq.job_lifecycle.call_exception_handlers",), "aftermath.py: RQ_EXCEPTION_HANDLERS after a rescue",
             ("test_exception_handlers_are_a_chain_a_false_return_ends",)),
    Internal(("rq.registry.clean_registries", "rq.worker_registration.clean_worker_registry"), "jobs.py `cleanup`",
             ("test_the_cleanup_command_runs_rqs_maintenance_steps",)),
    # rq: the scheduler
    Internal(("`RQScheduler(name=…)` retakes its own locks",), "scheduling.py: a restarted instance schedules at once",
             ("test_a_scheduler_under_the_same_name_takes_its_locks_back",)),
    Internal(("rq.scheduler.RQScheduler._process", "rq.scheduler.RQScheduler._stop_requested",
              "rq.scheduler.RQScheduler._install_signal_handlers"), "scheduling.py: Takeover, the loop",
             ("test_the_scheduler_process_is_where_takeover_looks",)),
    Internal(("`RQScheduler.work`'s steps",), "scheduling.py repeats them (a source check: a loop cannot be observed)",
             ("test_the_scheduler_loop_we_repeat_is_still_rqs",)),
    Internal(("rq major version",), "rqcompat.py `RQ_MAJOR`, pyproject.toml, packaging/requirements.txt",
             ("test_rq_version_is_within_the_pin",)),
    # redis-py
    Internal(("redis.connection.ConnectionPool._available_connections",
              "redis.connection.ConnectionPool._created_connections"), "handoff.py `adopt`",
             ("test_a_connection_placed_in_a_fresh_pool_is_the_one_its_first_command_gets",)),
    Internal(("redis.connection.AbstractConnection.next_health_check",),
             "handoff.py `prepare`: no PING before a new spare's HELLO",
             ("test_a_health_check_is_due_by_next_health_check",)),
    Internal(("redis.connection.AbstractConnection.pid",),
             "handoff.py `forked`: no `shutdown()` for the horse's socket",
             ("test_disconnect_shuts_a_socket_down_only_in_its_owners_process",)),
    Internal(("redis.connection.ConnectionPool.connection_kwargs", "redis.connection.ConnectionPool.cache"),
             "worker.py `main_work_horse`, handoff.py, connection.py, prepare.py",
             ("test_a_pool_makes_new_connections_from_connection_kwargs",
              "test_sentinel_discovery_failures_say_whether_sentinels_answered")),
    Internal(("redis.driver_info.DriverInfo",), "connection.py `_driver_info`",
             ("test_driver_info_given_once_is_not_resolved_per_connection",)),
    Internal(("redis.sentinel.Sentinel.sentinels", "`MasterNotFoundError`'s `\" : \"` before the sentinels' errors"),
             "connection.py `SentinelManager`", ("test_sentinel_discovery_failures_say_whether_sentinels_answered",)),
    Internal(("SentinelConnectionPool.get_master_address", "SentinelConnectionPool.master_address"),
             "connection.py `refresh_primary`, `primary_address`",
             ("test_a_sentinel_pool_says_which_primary_it_uses",)),
    Internal(("redis.utils.SENTINEL",), "connection.py: the default of our `read_response`",
             ("test_each_overridden_method_still_exists_with_the_same_parameters",)),
    Internal(("redis.crc.key_slot",), "connection.py `_slot_owner_url`", ("test_key_slot_is_the_clusters",)),
    # systemd-python
    Internal(("systemd.journal.JournalHandler._extra",), "journal.py `journal_handler` (with `send`, `map_priority`)",
             ("test_our_journal_handler_sends_what_systemds_sends_less_what_journald_drops",)),
]

DOCUMENTED = {
    # imports from their documented API (no entry in INTERNALS needed)
    "rq", "rq.Queue", "rq.Retry", "rq.Worker", "rq.SimpleWorker", "rq.SpawnWorker", "rq.worker.Worker",
    "rq.worker.BaseWorker", "rq.queue.Queue", "rq.job.Job", "rq.job.JobStatus", "rq.results.Result",
    "rq.executions.Execution", "rq.scheduler.RQScheduler", "rq.registry.FailedJobRegistry",
    "rq.registry.StartedJobRegistry", "rq.exceptions.NoSuchJobError", "rq.exceptions.InvalidJobOperation",
    "rq.exceptions.AbandonedJobError", "rq.defaults.DEFAULT_LOGGING_DATE_FORMAT", "rq.defaults.DEFAULT_LOGGING_FORMAT",
    "redis", "redis.Redis", "redis.ConnectionPool", "redis.backoff.NoBackoff", "redis.retry.Retry",
    "redis.connection.Connection",
    "redis.connection.ConnectionPool", "redis.connection.SSLConnection", "redis.connection.UnixDomainSocketConnection",
    "redis.connection.AbstractConnection", "redis.maint_notifications.MaintNotificationsConfig",
    "redis.sentinel.Sentinel", "redis.sentinel.MasterNotFoundError",
    "redis.sentinel.SentinelManagedConnection", "redis.exceptions.WatchError", "redis.exceptions.NoScriptError",
    "systemd.journal",
    "systemd.journal.JournalHandler",
}
"""(The logging defaults only serve as our overrides' defaults, which the signature check compares.)"""

COINCIDENCES = {"_add_jobs", "_connect", "_exit", "_lock", "_read", "_status"}
"""Private names of ours (or os._exit) that rq or redis-py happen to use too: not their internals."""


def _listed_names() -> set[str]:
    return {name for internal in INTERNALS for name in internal.names}


def _library_private_names() -> set[str]:
    names: set[str] = set()
    for module in (rq, sys.modules["redis"], sys.modules[_journal_handler_class().__module__]):
        root = Path(module.__file__).parent  # type: ignore[arg-type]
        for path in root.rglob("*.py"):
            text = path.read_text(errors="replace")
            names |= set(re.findall(r"\.(_[A-Za-z]\w*)\b", text)) | set(re.findall(r"def (_[A-Za-z]\w*)", text))
    return {n for n in names if not n.startswith("__")}


def test_every_private_name_of_theirs_we_use_is_listed():
    ours: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        for name in set(re.findall(r"\.(_[A-Za-z]\w*)\b", text)) | set(re.findall(r"def (_[A-Za-z]\w*)", text)):
            ours.setdefault(name, set()).add(path.name)
    touched = (set(ours) & _library_private_names()) - COINCIDENCES
    listed = {name.rsplit(".", 1)[-1] for name in _listed_names()}
    missing = {name: sorted(ours[name]) for name in touched - listed}
    assert not missing, f"add these to INTERNALS with a test that pins them: {missing}"


def test_every_import_from_their_undocumented_api_is_listed():
    listed = _listed_names()
    missing = {}
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            else:
                continue
            for name in imported:
                if name.split(".")[0] in ("rq", "redis", "systemd") and name not in DOCUMENTED | listed:
                    missing.setdefault(name, []).append(path.name)
    assert not missing, f"add these to INTERNALS (or DOCUMENTED, if rq/redis-py document them): {missing}"


def test_each_internal_is_pinned_by_a_test_that_exists():
    tests = {name for path in CONTRACT_TESTS for name in re.findall(r"^def (test_\w+)", path.read_text(), re.M)}
    for internal in INTERNALS:
        for test in internal.pinned_by:
            assert test in tests, f"{internal.names[0]}: no contract test named {test}"
    pinned = {test for internal in INTERNALS for test in internal.pinned_by}
    guards = {name for name in re.findall(r"^def (test_\w+)", Path(__file__).read_text(), re.M)}
    assert tests - pinned <= guards | {"test_job_func_never_raises"}, (
        f"contract tests that pin nothing listed in INTERNALS: {sorted(tests - pinned - guards)}")


def docs_table() -> str:
    """The table of internals in docs/operations.md (Markdown)."""
    rows = ["| what we rely on | where | pinned by (`tests/unit/test_rq_contract*.py`) |", "| --- | --- | --- |"]
    for internal in INTERNALS:
        names = ", ".join(f"`{name}`" if name.replace(".", "").replace("_", "").isalnum() else name
                          for name in internal.names)
        rows.append(f"| {names} | {internal.used_in} | {', '.join(f'`{t}`' for t in internal.pinned_by)} |")
    return "\n".join(rows) + "\n"


def test_the_operations_guide_lists_every_internal():
    assert docs_table() in OPERATIONS.read_text(), (
        "docs/operations.md's table of internals is stale: replace it with the output of "
        "`.venv/bin/python tests/unit/test_rq_contract.py`")


# -- pins of our own helpers' use of rq, and the version -----------------------------------------


@pytest.fixture
def connection():
    return fakeredis.FakeRedis()


def test_requeue_now_is_a_retry_without_its_interval(connection):
    queue = Queue("default", connection=connection)
    job = queue.enqueue("os.getpid", retry=rq.Retry(max=2, interval=600))
    queue.enqueue("os.getpid")
    queue.remove(job)
    with connection.pipeline() as pipe:
        rqcompat.requeue_now(job, queue, pipe)
        pipe.execute()
    assert queue.job_ids[0] == job.id and job.get_status(refresh=True).value == "queued"
    assert Job.fetch(job.id, connection=connection).retries_left == 1


def test_job_func_never_raises():
    assert rqcompat.job_func(None) == "?"
    job = Job.create("os.getpid", connection=fakeredis.FakeRedis())
    assert rqcompat.job_func(job) == "os.getpid"
    job._func_name = None
    job._data = b"not a pickle"
    assert rqcompat.job_func(job) == "?"


def test_rq_version_is_within_the_pin():
    major = int(rq.__version__.split(".")[0])
    assert major == rqcompat.RQ_MAJOR, (
        f"rq {rq.__version__}: this code is written against rq {rqcompat.RQ_MAJOR}.x (rqcompat.RQ_MAJOR)")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"rq>={rqcompat.RQ_MAJOR}.' in pyproject and f',<{rqcompat.RQ_MAJOR + 1}"' in pyproject, (
        "pyproject.toml's rq pin and rqcompat.RQ_MAJOR disagree")
    bundled = (ROOT / "packaging" / "requirements.txt").read_text()
    assert f"\nrq=={rqcompat.RQ_MAJOR}." in bundled, "packaging/requirements.txt bundles another rq major"


def test_the_scheduler_loop_we_repeat_is_still_rqs():
    """scheduling.py repeats RQScheduler.work's steps around an interruptible pause. The order of
    steps inside a loop cannot be watched from outside without running it: a source check."""
    source = inspect.getsource(RQScheduler.work)
    steps = ("self._install_signal_handlers()", "self.register_birth()", "if self._stop_requested:", "self.stop()",
             "if self.should_reacquire_locks:", "self.acquire_locks()", "self.heartbeat()",
             "self.enqueue_scheduled_jobs()", "time.sleep(self.interval)")
    positions = [source.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), (
        f"rq {rq.__version__} changed RQScheduler.work: port scheduling.ServiceScheduler.work")
    assert len(source.splitlines()) <= 16, f"rq {rq.__version__}'s RQScheduler.work grew: port scheduling.py"


def test_the_pop_loop_we_repeat_is_still_rqs():
    """worker.py repeats rq's loop around the pop with a pop of its own (into the held list)."""
    source = inspect.getsource(BaseWorker.dequeue_job_and_maintain_ttl)
    steps = ("self.set_state(WorkerStatus.IDLE)", "self.procline('Listening on ' + qnames)", "self.heartbeat()",
             "self.run_maintenance_tasks()", "self.queue_class.dequeue_any(", "self._ordered_queues",
             "self.reorder_queues(reference_queue=queue)", "job.redis_server_version = self.get_redis_server_version()",
             "except DequeueTimeout:", "except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)",
             "self.exponential_backoff_factor", "self.max_connection_wait_time")
    positions = [source.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), (
        f"rq {rq.__version__} changed dequeue_job_and_maintain_ttl: port worker.py's")
    assert len(source.splitlines()) <= 72, f"rq {rq.__version__}'s dequeue_job_and_maintain_ttl grew: port worker.py's"


def test_the_registration_we_repeat_is_still_rqs():
    """worker.py repeats rq's prepare_execution and adds the held id's removal to its transaction."""
    assert "return prepare_execution(self, job)" in inspect.getsource(BaseWorker.prepare_execution)
    source = inspect.getsource(rq.executions.prepare_execution)
    steps = ("with worker.connection.pipeline() as pipeline:", "heartbeat_ttl = worker.get_heartbeat_ttl(job)",
             "Execution.create(job, heartbeat_ttl, pipeline=pipeline, worker_name=worker.name)",
             "worker.executions[execution.id] = execution", "worker.set_state(WorkerStatus.BUSY, pipeline=pipeline)",
             "pipeline.execute()", "return execution")
    positions = [source.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), (
        f"rq {rq.__version__} changed prepare_execution: port worker.py's")
    assert source.count("pipeline.") == 1, f"rq {rq.__version__}'s prepare_execution does more: port worker.py's"


def test_the_started_mark_we_repeat_is_still_rqs():
    """worker.py repeats rq's prepare_job_execution writes inside a transaction watching the execution."""
    source = inspect.getsource(BaseWorker.prepare_job_execution)
    steps = ("with self.connection.pipeline() as pipeline:", "heartbeat_ttl = self.get_heartbeat_ttl(job)",
             "self.heartbeat(heartbeat_ttl, pipeline=pipeline)",
             "job.heartbeat(now(), heartbeat_ttl, pipeline=pipeline)",
             "job.prepare_for_execution(self.name, pipeline=pipeline)", "pipeline.persist(job.key)",
             "pipeline.execute()")
    positions = [source.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), (
        f"rq {rq.__version__} changed prepare_job_execution: port worker.py's _mark_started")
    assert source.count("pipeline.") == 3, f"rq {rq.__version__}'s prepare_job_execution does more: port worker.py's"


def test_a_failure_rq_finalizes_goes_through_finalize_failure():
    """worker.py's ``_finalize_failure`` sees every exception of perform_job, the STARTED mark's too."""
    source = inspect.getsource(BaseWorker.perform_job)
    assert source.find("self.prepare_job_execution(") < source.find("self._finalize_failure(job, queue, execution, "
                                                                     "sys.exc_info())")


def test_a_returned_jobs_end_goes_through_finalize_success_inside_perform_jobs_try():
    """worker.py's ``_finalize_success`` writes a returned job's end inside perform_job's try, whose except
    hands what it raises (``EndNotWritten``) to ``_finalize_failure``; the end's writes are in it."""
    source = inspect.getsource(BaseWorker.perform_job)
    assert source.find("job.perform()") < source.find("self._finalize_success(job, queue, execution, return_value)") \
        < source.find("except:") < source.find("self._finalize_failure(job, queue, execution, sys.exc_info())")
    assert "self.handle_job_success(" in inspect.getsource(BaseWorker._finalize_success)


def test_the_end_of_a_job_is_one_transaction_watched_before_move_dependents_to_ready():
    """worker.py's ``handle_job_success`` watches the fencing marks and reads its own inside rq's
    ``move_dependents_to_ready`` call: after rq's WATCH (the pipeline is in immediate mode), before
    its MULTI, with rq's loop retrying the whole on a WatchError (a fencing after the read)."""
    source = inspect.getsource(BaseWorker.handle_job_success)
    steps = ("pipeline.watch(job.dependents_key)", "queue.move_dependents_to_ready(job, pipeline=pipeline)",
             "pipeline.multi()", "pipeline.execute()", "except redis.exceptions.WatchError:", "continue")
    at = [source.find(step) for step in steps]
    assert -1 not in at and at == sorted(at), dict(zip(steps, at, strict=True))
    assert "while True:" in source

def test_the_end_we_repeat_is_still_rqs():
    """ending.py repeats rq's handle_job_success writes (no dependents, no repeat) in rq's order, then
    rq's steps after its EXEC: the slot's release and the log line."""
    source = inspect.getsource(BaseWorker.handle_job_success)
    steps = ("self.increment_successful_job_count(pipeline=pipeline)",
             "self.increment_total_working_time(job.ended_at - job.started_at, pipeline)",
             "result_ttl = job.get_result_ttl(self.default_result_ttl)", "if result_ttl != 0:",
             "job._handle_success(", "execution_id=execution.id,", "execution_started_at=execution.created_at,",
             "execution_ended_at=job.ended_at,", "Repeat.schedule(job, queue, pipeline=pipeline)",
             "job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)",
             "job._status = JobStatus.FINISHED",
             "self.cleanup_execution(job, pipeline=pipeline, execution=execution)", "pipeline.execute()",
             "queue.enqueue_ready_jobs_by_queue(dependent_job_ids_by_queue)", "release_slot(job)",
             "'Successfully completed %s job in %ss on worker %s'",
             "'Successfully completed job %s in %ss on worker %s'")
    at = [source.find(step) for step in steps]
    assert -1 not in at and at == sorted(at), dict(zip(steps, at, strict=True))
    assert source.count("pipeline=pipeline") + source.count(", pipeline)") == 7, (
        f"rq {rq.__version__}'s handle_job_success writes more: port ending.py's")


def test_a_job_without_depends_on_has_no_dependencies_key_and_its_hash_carries_its_status(connection):
    queue = Queue("contract", connection=connection)
    parent = queue.enqueue("builtins.len", "x")
    child = queue.enqueue("builtins.len", "y", depends_on=parent)
    assert parent._dependency_ids == [] and not connection.exists(parent.dependencies_key)
    assert Job.fetch(child.id, connection=connection)._dependency_ids == [parent.id]
    assert connection.exists(child.dependencies_key)
    with connection.pipeline(transaction=False) as pipeline:
        parent._handle_success(60, pipeline=pipeline, worker_name="w")
        hsets = [args for args, _ in pipeline.command_stack if args[0] == "HSET" and args[1] == parent.key]
    assert hsets[0][2:] == ("status", "finished"), hsets
    whole = dict(zip(hsets[1][2::2], hsets[1][3::2], strict=True))
    assert whole["status"] == "finished", "the whole hash carries the status written alone before it"


def test_rqs_get_state_reads_what_set_state_keeps(connection):
    worker = Worker(["contract"], connection=connection)
    worker._state = "idle"
    assert worker.get_state() == "idle"
    worker.set_state("busy")
    assert worker._state == "busy" and connection.hget(worker.key, "state") == b"busy"


if __name__ == "__main__":
    print(docs_table(), end="")


def test_rq_suspend_sets_the_flag_our_pop_reads_and_rqs_look_beats(connection):
    """``rq suspend`` / ``rq resume`` (rq's ``suspend``/``resume``) set and delete WORKERS_SUSPENDED, under the
    key prefix, which held.py's scripts read; ``is_suspended`` beats the worker it is given (our suspended
    wait relies on it for rq's heartbeat). The integration tests run the real ``rq suspend``."""
    from rq.suspension import WORKERS_SUSPENDED, is_suspended, resume, suspend

    assert WORKERS_SUSPENDED == f"{rq.defaults.RQ_KEY_PREFIX}:suspended"
    suspend(connection, 60)
    assert connection.exists(WORKERS_SUSPENDED) and 0 < connection.ttl(WORKERS_SUSPENDED) <= 60
    worker = rq.Worker(["default"], connection=connection, name="w")
    worker.register_birth()
    connection.hdel(worker.key, "last_heartbeat")
    assert is_suspended(connection, worker) and connection.hget(worker.key, "last_heartbeat")
    resume(connection)
    assert not connection.exists(WORKERS_SUSPENDED) and not is_suspended(connection)


def test_rqs_dequeue_strategies_reorder_the_queues_our_pop_reads(connection):
    """RQ_DEQUEUE_STRATEGY's values are rq's; rq's ``reorder_queues`` (called by our pop after each job)
    rotates ``_ordered_queues`` for round_robin and shuffles them for random."""
    from rq.worker import DequeueStrategy

    from rq_worker_service.variables import DEQUEUE_STRATEGIES

    assert tuple(s.value for s in DequeueStrategy) == DEQUEUE_STRATEGIES
    queues = [Queue(n, connection=connection) for n in ("a", "b", "c")]
    worker = rq.Worker(queues, connection=connection)
    worker._dequeue_strategy = DequeueStrategy.ROUND_ROBIN
    worker.reorder_queues(reference_queue=queues[0])
    assert [q.name for q in worker._ordered_queues] == ["b", "c", "a"]
    worker._dequeue_strategy = DequeueStrategy.DEFAULT
    worker.reorder_queues(reference_queue=queues[1])
    assert [q.name for q in worker._ordered_queues] == ["b", "c", "a"]
    worker._dequeue_strategy = DequeueStrategy.RANDOM
    seen = set()
    for _ in range(50):
        worker.reorder_queues(reference_queue=queues[0])
        seen.add(tuple(q.name for q in worker._ordered_queues))
    assert len(seen) > 1
