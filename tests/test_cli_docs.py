"""Every `medclipseg` command and option has help text and is documented in docs/cli.md."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from medclipseg.cli import build_parser

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _commands():
    parser = build_parser()
    subparsers, = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {action.dest: action.help for action in subparsers._choices_actions}
    return [(name, helps.get(name), command) for name, command in subparsers.choices.items()]


def _options(command):
    return [action for action in command._actions if not isinstance(action, argparse._HelpAction)]


def _sections():
    """{command: text of its '## `medclipseg <command>`' section} of docs/cli.md."""
    text = DOCS.read_text(encoding="utf-8")
    parts = re.split(r"^## `medclipseg ([\w-]+)`\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


COMMANDS = _commands()


def test_every_command_is_listed():
    names = {name for name, _, _ in COMMANDS}
    assert {"phantoms", "pretrain", "train", "ship", "evaluate", "benchmark", "predict", "export", "ingest"} <= names
    assert set(_sections()) == names


@pytest.mark.parametrize("name, summary, command", COMMANDS, ids=[name for name, _, _ in COMMANDS])
def test_command_and_options_have_help(name, summary, command):
    assert summary and summary.strip(), f"command {name} has no help"
    for action in _options(command):
        label = action.option_strings[0] if action.option_strings else action.dest
        assert action.help and action.help.strip(), f"medclipseg {name} {label} has no help"
        command._get_formatter()._expand_help(action)  # a stray '%' would break --help


@pytest.mark.parametrize("name, summary, command", COMMANDS, ids=[name for name, _, _ in COMMANDS])
def test_command_and_options_are_documented(name, summary, command):
    section = _sections()[name]
    assert re.search(rf"^medclipseg {name}\b", section, flags=re.M), f"no example of medclipseg {name}"
    documented = set(re.findall(r"^\| `([^` ]+)", section, flags=re.M))
    for action in _options(command):
        wanted = action.option_strings or [action.dest.upper()]
        assert documented & set(wanted), f"medclipseg {name}: {wanted[0]} is not in the table of docs/cli.md"
    known = {flag for action in _options(command) for flag in action.option_strings or [action.dest.upper()]}
    assert documented <= known, f"docs/cli.md documents options medclipseg {name} does not have: {documented - known}"
