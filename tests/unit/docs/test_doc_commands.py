"""What the README says to type exists: each ``chimney`` command and option it shows, each ``make`` target,
and the address rule as ``--help`` words it."""

from __future__ import annotations

import re

import pytest
from chimney_help import ADDRESS_RULE, help_text
from docs_examples import ROOT, blocks

_OPTION = re.compile(r"(?<![\w-])(--?[a-z][a-z-]*)")
_CHOICES = re.compile(r"\{([a-z,]+)\}")


def readme_commands() -> list[str]:
    """Every ``chimney ...`` line of the README's shell blocks and every inline `chimney ...` of its prose."""
    readme = (ROOT / "README.md").read_text()
    shown = [
        line.split("#", 1)[0].strip()
        for block in blocks("README.md")
        if block.lang == "sh"
        for line in block.code.splitlines()
        if line.startswith("chimney ")
    ]
    return shown + re.findall(r"`(chimney [^`]+)`", readme)


def test_the_readme_shows_commands() -> None:
    assert {command.split()[1] for command in readme_commands()} >= {"serve", "nc", "demo"}


@pytest.mark.parametrize("command", readme_commands())
def test_each_readme_command_and_its_options_exist(command: str) -> None:
    words = command.split(" -- ")[0].split()  # after --, the words are the program's (chimney run)
    name = None if words[1].startswith("-") else words[1]
    text = help_text(name)
    for option in _OPTION.findall(" ".join(words[1:] if name is None else words[2:])):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), f"{command!r}: no {option}"
    for choices in _CHOICES.findall(command):
        offered = [set(c.split(",")) for c in _CHOICES.findall(text)]
        assert set(choices.split(",")) in offered, f"{command!r}: {{{choices}}} is not what --help offers"


def test_each_option_the_readme_prose_names_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    named = {m.split()[0] for m in re.findall(r"`(--[a-z][^`]*)`", readme)}
    assert named, "the README names no option at all"
    every_help = "\n".join(help_text(command) for command in (None, "serve", "nc", "demo"))
    for option in named:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", every_help), f"no command takes {option}"


def test_each_make_target_the_readme_names_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.MULTILINE))
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"(?:^|`)make ([a-z][\w-]*)", readme, re.MULTILINE))
    assert named >= {"demo", "test"}
    assert named <= targets, f"targets the README names and the Makefile lacks: {named - targets}"


def test_readme_states_the_address_rule() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert ADDRESS_RULE in readme.replace("Addresses must", "addresses must")
