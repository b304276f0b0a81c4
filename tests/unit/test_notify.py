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
    assert recv(sock) == f"READY=1\nSTATUS=Idle · listening on café\nMAINPID={os.getpid()}"
    n.extend_timeout(2.5)
    assert recv(sock) == "EXTEND_TIMEOUT_USEC=2500000"
    n.error("bad config", 22)
    assert recv(sock) == "STATUS=bad config\nERRNO=22"
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
