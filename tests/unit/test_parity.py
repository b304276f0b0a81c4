"""Every option of rq's ``rq worker`` is in ``parity.OPTIONS``, served by something that exists or listed
with its reason: read from rq's click command at test time, so a new rq option fails here, not in an
app that cannot move onto the package."""

from __future__ import annotations

import click
import pytest
import rq.cli

from rq_worker_service.cli import build_parser
from rq_worker_service.parity import OPTIONS, RqOption, readme_table
from rq_worker_service.variables import BY_NAME


def rq_worker_options() -> dict[str, tuple[str, ...]]:
    """``rq worker``'s parameters by click name: their spellings, as ``OPTIONS`` gives them."""
    command: click.Command = rq.cli.main.commands["worker"]
    return {param.name or "": tuple(param.opts) for param in command.params}


def run_flags() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {opt for action in sub.choices["run"]._actions for opt in action.option_strings}


def unmatched(options: tuple[RqOption, ...], rq_options: dict[str, tuple[str, ...]]) -> tuple[list, list]:
    """rq's options no entry names (spelled as rq spells them), and entries rq no longer has."""
    ours = {option.opts for option in options}
    theirs = set(rq_options.values())
    return sorted(theirs - ours), sorted(ours - theirs)


def test_rq_worker_has_options_to_check():
    """A guard for the guard: were click's parameters not found, the test below would compare nothing."""
    assert len(rq_worker_options()) >= 20
    assert ("--burst", "-b") in rq_worker_options().values()


def test_every_rq_worker_option_is_mapped_or_listed():
    missing, stale = unmatched(OPTIONS, rq_worker_options())
    assert not missing, (f"rq worker has options parity.OPTIONS does not name: {missing}; map each to the "
                         f"variable that serves it, or list it with its reason")
    assert not stale, f"parity.OPTIONS names options rq worker no longer has: {stale}"
    assert len({option.opts for option in OPTIONS}) == len(OPTIONS), "an option is named twice"


def test_unmatched_sees_an_option_added_or_removed():
    """The comparison itself: an rq option left out is missing, one rq dropped is stale."""
    ours = {option.opts[0]: option.opts for option in OPTIONS}
    assert unmatched(OPTIONS, ours) == ([], [])
    assert unmatched(OPTIONS, {**ours, "new_thing": ("--new-thing",)}) == ([("--new-thing",)], [])
    assert unmatched(OPTIONS + (RqOption(("--gone",), reason="x"),), ours) == ([], [("--gone",)])


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.opts[0])
def test_each_option_is_served_by_something_that_exists(option: RqOption):
    kinds = [option.variable, option.flag, option.reason]
    assert sum(kind is not None for kind in kinds) == 1, "exactly one of variable, flag, reason"
    if option.variable is not None:
        assert option.variable in BY_NAME, f"{option.opts[0]}: no variable {option.variable} in variables.py"
        if option.value is not None:
            BY_NAME[option.variable].parse(option.value)  # raises Invalid for a value the variable refuses
    else:
        assert option.value is None, "a value belongs to a variable"
    if option.flag is not None:
        assert option.flag in run_flags(), f"{option.opts[0]}: `run` has no flag {option.flag}"
    if option.reason is not None:
        assert option.reason.startswith("does not apply: "), option.reason


def test_readme_table_has_a_row_per_option():
    rows = readme_table().splitlines()[2:]
    assert len(rows) == len(OPTIONS)
    assert "| `--results-ttl` | `RQ_RESULT_TTL` |" in rows
