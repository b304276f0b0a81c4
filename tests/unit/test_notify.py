from __future__ import annotations

import os
import socket

import pytest

from rq_worker_service.notify import Notifier


def notifier(monkeypatch, **env) -> Notifier:
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Notifier()


@pytest.fixture
def sock(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "n.sock"))
    s.settimeout(1)
    yield s
    s.close()


def recv(sock) -> str:
    return sock.recv(4096).decode("utf-8")


def test_messages_reach_the_socket_as_utf8(sock, tmp_path, monkeypatch):
    n = notifier(monkeypatch, NOTIFY_SOCKET=str(tmp_path / "n.sock"))
    n.ready("Idle · listening on café")
    assert recv(sock) == f"READY=1\nMAINPID={os.getpid()}\nSTATUS=Idle · listening on café"
    n.extend_timeout(2.5)
    assert recv(sock) == "EXTEND_TIMEOUT_USEC=2500000"
    n.error("bad config", 22)
    assert recv(sock) == "ERRNO=22\nSTATUS=bad config"
    n.reloading("reloading")
    assert recv(sock).startswith("RELOADING=1\nMONOTONIC_USEC=")


def test_status_is_not_resent_when_unchanged(sock, tmp_path, monkeypatch):
    n = notifier(monkeypatch, NOTIFY_SOCKET=str(tmp_path / "n.sock"))
    n.status("a")
    n.status("a")
    n.status("b")
    assert [recv(sock), recv(sock)] == ["STATUS=a", "STATUS=b"]


def test_watchdog_only_when_armed_for_this_pid(sock, tmp_path, monkeypatch):
    path = str(tmp_path / "n.sock")
    assert notifier(monkeypatch, NOTIFY_SOCKET=path).watchdog_seconds is None
    other_pid = notifier(monkeypatch, NOTIFY_SOCKET=path, WATCHDOG_USEC="30000000", WATCHDOG_PID="1")
    assert other_pid.watchdog_seconds is None
    n = notifier(monkeypatch, NOTIFY_SOCKET=path, WATCHDOG_USEC="30000000", WATCHDOG_PID=str(os.getpid()))
    assert n.watchdog_seconds == 30
    n.watchdog()
    assert recv(sock) == "WATCHDOG=1"


def test_a_forked_child_never_sends(sock, tmp_path, monkeypatch):
    n = notifier(monkeypatch, NOTIFY_SOCKET=str(tmp_path / "n.sock"))
    pid = os.fork()
    if pid == 0:
        n.status("from the horse")
        os._exit(0)
    os.waitpid(pid, 0)
    n.status("from main")
    assert recv(sock) == "STATUS=from main"


def test_without_systemd_everything_is_a_no_op(monkeypatch):
    n = notifier(monkeypatch)
    assert not n.enabled
    n.ready("x")
    n.watchdog()


def test_status_soon_sends_one_update_per_interval_rendered_when_sent(sock, tmp_path, monkeypatch):
    n = notifier(monkeypatch, NOTIFY_SOCKET=str(tmp_path / "n.sock"))
    n.interval = 0.3
    state = {"job": 0}
    for job in range(1, 51):  # a stream of short jobs: two updates each
        state["job"] = job
        n.status_soon(lambda: f"job {state['job']}")
    first = recv(sock)
    assert first.startswith("STATUS=job ")
    sock.settimeout(0.1)
    with pytest.raises(TimeoutError):  # the next one waits for the interval
        recv(sock)
    state["job"] = 99
    n.status_soon(lambda: f"job {state['job']}")
    sock.settimeout(1)
    assert recv(sock) == "STATUS=job 99"  # rendered at send time, not at the call


def test_an_immediate_status_supersedes_a_pending_one(sock, tmp_path, monkeypatch):
    n = notifier(monkeypatch, NOTIFY_SOCKET=str(tmp_path / "n.sock"))
    n.interval = 0.3
    n.status_soon(lambda: "first")
    assert recv(sock) == "STATUS=first"
    n.status_soon(lambda: "stale: a job ended")  # waits for the interval …
    n.stopping("Stopping")  # … and a stop is announced meanwhile
    assert recv(sock) == "STOPPING=1\nSTATUS=Stopping"
    sock.settimeout(0.6)
    with pytest.raises(TimeoutError):
        recv(sock)


def test_status_soon_is_a_no_op_in_a_forked_child(sock, tmp_path, monkeypatch):
    n = notifier(monkeypatch, NOTIFY_SOCKET=str(tmp_path / "n.sock"))
    pid = os.fork()
    if pid == 0:
        n.status_soon(lambda: "from the horse")
        os._exit(0 if n._sender is None else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    n.status("from main")
    assert recv(sock) == "STATUS=from main"
