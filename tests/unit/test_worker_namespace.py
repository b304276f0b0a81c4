"""Our state stays out of rq's namespace: a worker object is rq's, and every attribute we add to it is
one rq never uses, so that no rq release can start sharing (and breaking) one of ours unnoticed.

What we add is two attributes: ``settings`` and ``parts`` (every part's state lives in the latter).
What we write of rq's own is its state or options, written as rq would (a stop, the scheduler, the
spawn horse's set-up), listed in ``RQ_STATE_WE_SET``. Methods are checked by test_rq_contract.py.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

import fakeredis
import pytest
from rq import Queue, SimpleWorker, SpawnWorker, Worker

import rq_worker_service
from rq_worker_service.config import load_settings
from rq_worker_service.notify import Notifier
from rq_worker_service.worker import ServiceWorkerMixin
from rq_worker_service.worker_classes import ServiceSimpleWorker, ServiceSpawnWorker, ServiceWorker

OUR_ATTRIBUTES = {"settings", "parts"}
"""The attributes our classes add to a worker."""
RQ_STATE_WE_SET = {"_stop_requested", "_shutdown_requested_date", "_horse_pid", "_is_horse", "execution", "scheduler",
                   "max_connection_wait_time", "_state"}
"""rq's own attributes we write, as rq itself would (docs/operations.md lists them)."""
CLASSES = {ServiceWorker: Worker, ServiceSimpleWorker: SimpleWorker, ServiceSpawnWorker: SpawnWorker}
PACKAGE = Path(rq_worker_service.__file__).parent


def assigned(tree: ast.AST, owner: str) -> set[str]:
    """Names of the attributes of ``owner`` (``self``, ``worker``, ``self.worker``) assigned in ``tree``."""
    names = set()
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        while targets:
            target = targets.pop()
            if isinstance(target, ast.Tuple | ast.List):
                targets.extend(target.elts)
            elif isinstance(target, ast.Attribute) and ast.unparse(target.value) == owner:
                names.add(target.attr)
    return names


def rq_names() -> set[str]:
    """Every attribute name rq's worker classes define or assign anywhere, and what their instances hold."""
    names: set[str] = set()
    for rq_class in CLASSES.values():
        for klass in rq_class.__mro__:
            if klass.__module__.startswith("rq."):
                names |= set(vars(klass)) | assigned(ast.parse(textwrap.dedent(inspect.getsource(klass))), "self")
        names |= set(vars(rq_class(["q"], connection=fakeredis.FakeRedis())))
    return names


def our_writes() -> dict[str, set[str]]:
    """Attributes our code writes to a worker: in the worker classes (``self.x``), in the parts
    (``self.worker.x``, the worker they were handed) and in the spawn horse (``worker.x``)."""
    writes: dict[str, set[str]] = {}
    for klass in (ServiceWorkerMixin, *CLASSES):
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        writes[klass.__name__] = assigned(tree, "self")
    for path in [*sorted((PACKAGE / "parts").glob("*.py")), PACKAGE / "horse.py"]:
        tree = ast.parse(path.read_text())
        writes[path.name] = assigned(tree, "self.worker") | assigned(tree, "worker")
    return writes


def test_our_attributes_are_not_rqs():
    assert not OUR_ATTRIBUTES & rq_names(), "rq uses one of our attribute names: rename ours"
    assert RQ_STATE_WE_SET <= rq_names(), "rq no longer has one of the attributes we write as rq would"


def test_we_write_no_attribute_of_rqs_beyond_the_listed_state():
    rq = rq_names()
    for where, names in our_writes().items():
        for name in names - OUR_ATTRIBUTES - RQ_STATE_WE_SET:
            hint = "rq uses that name too" if name in rq else "a part's state belongs in worker.parts"
            pytest.fail(f"{where} writes worker.{name}: {hint}")


def test_the_checks_see_a_collision():
    """The scan finds a write of rq's attribute, as it would in our code."""
    tree = ast.parse("class W:\n    def f(self):\n        self._state, self.ours = 1, 2\n")
    assert assigned(tree, "self") == {"_state", "ours"} and "_state" in rq_names()


@pytest.mark.parametrize("ours, theirs", CLASSES.items())
def test_a_worker_of_ours_holds_only_our_two_attributes_more_than_rqs(ours, theirs):
    connection = fakeredis.FakeRedis()
    worker = ours(["q"], connection=connection, settings=load_settings({}), notifier=Notifier())
    stock = theirs(["q"], connection=connection)
    assert set(vars(worker)) - set(vars(stock)) - RQ_STATE_WE_SET == OUR_ATTRIBUTES


def test_after_a_run_too():
    """Hooks run during work (bootstrap, jobs, teardown) add nothing either (the simple worker runs
    on fakeredis)."""
    connection = fakeredis.FakeRedis()
    for _ in range(2):
        Queue(connection=connection).enqueue("os.getpid")
    worker = ServiceSimpleWorker(["default"], connection=connection, settings=load_settings({}), notifier=Notifier())
    stock = SimpleWorker(["default"], connection=connection)
    assert worker.work(burst=True, max_jobs=1) and stock.work(burst=True, max_jobs=1)
    assert set(vars(worker)) - set(vars(stock)) - RQ_STATE_WE_SET == OUR_ATTRIBUTES
