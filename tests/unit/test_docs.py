"""The documentation names every variable the code reads, and the shipped env file lists them all."""

from __future__ import annotations

import re
from pathlib import Path

from rq_worker_service.variables import VARIABLES, env_file_text, man_environment

ROOT = Path(__file__).resolve().parents[2]
CONFIG = (ROOT / "rq_worker_service" / "config.py").read_text()
README = (ROOT / "README.md").read_text()


def read_by_config() -> set[str]:
    names = set(re.findall(r'_(?:get|int|float|bool)\(\s*env,\s*"([A-Z_]+)"', CONFIG))
    names |= set(re.findall(r'env\.get\("([A-Z_]+)"\)', CONFIG))
    names |= set(re.findall(r'"(REDIS_[A-Z]+)"', CONFIG))
    return names - {"CREDENTIALS_DIRECTORY", "RQ_WORKER_INSTANCE"}


def test_every_variable_the_code_reads_is_documented():
    documented = {v.name for v in VARIABLES}
    assert read_by_config() <= documented, read_by_config() - documented
    for name in documented:
        assert f"`{name}" in README, f"{name} missing from README's table"


def test_shipped_env_file_lists_every_variable_and_sets_only_safe_ones():
    text = env_file_text()
    for var in VARIABLES:
        assert re.search(rf"^#?{var.name}=", text, re.M), var.name
    active = re.findall(r"^([A-Z_]+)=", text, re.M)
    assert active == ["REDIS_URL", "RQ_QUEUES"]


def test_man_page_environment_section():
    section = man_environment()
    assert section.startswith("[ENVIRONMENT]")
    assert all(var.name in section for var in VARIABLES)
    assert not any(line.startswith(("/", "[")) for line in section.splitlines()[1:])  # include-file syntax


def test_readme_gives_the_two_commands_that_ci_runs():
    assert "`scripts/demo`" in README and "`scripts/test`" in README
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
