"""The documentation names every variable the code reads, and the shipped env file lists them all."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from rq_worker_service import parity
from rq_worker_service.config import Settings
from rq_worker_service.variables import VARIABLES, env_file_text, man_environment, readme_table

ROOT = Path(__file__).resolve().parents[2]
CONFIG = (ROOT / "rq_worker_service" / "config.py").read_text()
README = (ROOT / "README.md").read_text()


def names_in_code() -> set[str]:
    """Every REDIS_* / RQ_* name config.py mentions as a string: each must be a declared variable."""
    return set(re.findall(r'"((?:REDIS|RQ)_[A-Z_]+)"', CONFIG))


def test_every_variable_the_code_reads_is_declared():
    declared = {v.name for v in VARIABLES}
    assert names_in_code() <= declared, names_in_code() - declared


def test_readme_table_is_the_generated_one():
    assert readme_table() in README, (
        "README.md's variables table is stale: replace it with the output of "
        "`.venv/bin/python -m rq_worker_service.variables readme`")


def test_readme_parity_table_is_the_generated_one():
    assert parity.readme_table() in README, (
        "README.md's table of rq worker's options is stale: replace it with the output of "
        "`.venv/bin/python -m rq_worker_service.parity readme`")


def test_every_settings_field_comes_from_one_variable():
    fields = [v.field for v in VARIABLES if v.field]
    assert len(fields) == len(set(fields))
    assert set(fields) | {"redis", "name", "warnings"} == {f.name for f in dataclasses.fields(Settings)}


def test_run_flags_show_their_default_and_variable():
    from rq_worker_service.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    run = sub.choices["run"]
    helps = {opt: action.help for action in run._actions for opt in action.option_strings}
    for var in VARIABLES:
        if var.flag:
            assert f"(default: {var.doc_default}) [{var.name}]" in helps[var.flag].replace("%%", "%"), var.flag


def test_shipped_env_file_lists_every_variable_and_sets_none():
    text = env_file_text()
    for var in VARIABLES:
        if var.name != "RQ_WORKER_INSTANCE":  # set by the unit from %i, not by the operator
            assert re.search(rf"^#?{var.name}=", text, re.M), var.name
    assert re.findall(r"^([A-Z_]+)=", text, re.M) == [], "defaults live in the code: every line is a comment"


def test_man_page_environment_section():
    section = man_environment()
    assert section.startswith("[ENVIRONMENT]")
    assert all(var.name in section for var in VARIABLES)
    assert not any(line.startswith(("/", "[")) for line in section.splitlines()[1:])  # include-file syntax


def test_readme_gives_the_two_commands_that_ci_runs():
    assert "`scripts/demo`" in README and "`scripts/test`" in README
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_each_expected_difference_from_rqs_suite_is_documented():
    """tests/rq_suite/expected.txt names, for each of rq's tests we fail on purpose, a documentation passage."""
    from rq_suite import run_suite  # tests/ is on sys.path (tests/conftest.py)

    entries = run_suite.load_expected()
    assert entries, "expected.txt is empty or unreadable"
    assert run_suite.undocumented(entries) == []


def test_readme_shows_the_acl_rule_the_command_prints():
    from rq_worker_service.acl import setuser

    assert f"$ rq-worker-service acl --user rqworker\n{setuser('rqworker')}\n" in README, (
        "README.md's ACL users section is stale: paste the output of `rq-worker-service acl --user rqworker`")
