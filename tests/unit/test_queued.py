"""``queued.compact``: fewer commands, the same data, for a batch a script runs at once."""

from __future__ import annotations

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rq_worker_service import queued


def test_an_hset_joins_the_hset_before_it_on_its_key_unless_another_command_names_the_key():
    commands = [("HSET", "job", "status", "finished"), ("HSET", "job", "status", "finished", "data", "x"),
                ("HINCRBY", "worker", "n", 1), ("HSET", "worker", "state", "busy"),
                ("HSET", "worker", "last_heartbeat", "t")]
    assert queued.compact(commands) == [("HSET", "job", "status", "finished", "status", "finished", "data", "x"),
                                        ("HINCRBY", "worker", "n", 1),
                                        ("HSET", "worker", "state", "busy", "last_heartbeat", "t")]
    apart = [("HSET", "w", "a", 1), ("HINCRBY", "w", "a", 1), ("HSET", "w", "a", 5)]
    assert queued.compact(apart) == apart


def test_an_expire_followed_by_another_of_its_key_is_left_out_unless_named_between_or_deleting():
    assert queued.compact([("EXPIRE", "k", 130), ("SADD", "other", "k2"), ("EXPIRE", "k", 70)]) == [
        ("SADD", "other", "k2"), ("EXPIRE", "k", 70)]
    kept = [("EXPIRE", "k", 130), ("SADD", "k", "m"), ("EXPIRE", "k", 70)]
    assert queued.compact(kept) == kept
    deleting = [("EXPIRE", "k", 0), ("EXPIRE", "k", 70)]
    assert queued.compact(deleting) == deleting
    options = [("EXPIRE", "k", 130, "NX"), ("EXPIRE", "k", 70)]
    assert queued.compact(options) == options


KEYS = st.sampled_from(["a", "b"])
COMMANDS = st.one_of(
    st.tuples(st.just("HSET"), KEYS, st.sampled_from(["f", "g"]), st.integers(0, 3)),
    st.tuples(st.just("HINCRBY"), KEYS, st.sampled_from(["f", "g"]), st.integers(1, 3)),
    st.tuples(st.just("EXPIRE"), KEYS, st.integers(-1, 100)),
    st.tuples(st.just("DEL"), KEYS),
    st.tuples(st.just("SADD"), KEYS, st.sampled_from(["x", "y"])),
)


def _state(connection: fakeredis.FakeRedis) -> dict:
    out = {}
    for key in sorted(connection.keys()):
        kind = connection.type(key)
        value = connection.hgetall(key) if kind == b"hash" else connection.smembers(key)
        out[key] = (kind, value, connection.ttl(key))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(COMMANDS, max_size=8))
def test_the_compacted_batch_leaves_what_the_batch_leaves(commands):
    """Generated batches (keys that meet: HSET, HINCRBY, EXPIRE with any TTL, DEL, a set on the same key)
    run as given and compacted on two servers leave the same keys, values and TTLs, or fail alike."""
    results = []
    for batch in (commands, queued.compact(commands)):
        connection = fakeredis.FakeRedis()
        try:
            for command in batch:
                connection.execute_command(*command)
        except Exception as exc:  # a WRONGTYPE: the same command meets it either way
            results.append(type(exc))
            continue
        results.append(_state(connection))
    assert results[0] == results[1]


@pytest.mark.parametrize("words", [("HSET", "k", "f", "v"), ("EXPIRE", "k", 5)])
def test_flatten_sends_each_command_as_its_length_then_its_words(words):
    with fakeredis.FakeRedis().pipeline(transaction=False) as pipeline:
        pipeline.execute_command(*words)
        flat = queued.flatten(pipeline)
        assert flat == [len(words), *words]  # (as rq passed them: the script's call encodes them)
        assert pipeline.command_stack == []
