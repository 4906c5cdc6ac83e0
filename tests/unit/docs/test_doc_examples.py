"""Every python block of the README and docs/api.md runs as written, and prints what its output block says."""

from __future__ import annotations

import pytest
from docs_examples import DOCUMENTS, Block, blocks, parse, python_blocks, run_python

SIM_BLOCKS = [block for block in python_blocks() if not block.needs_tap]


@pytest.mark.parametrize("block", SIM_BLOCKS, ids=lambda block: block.name)
def test_example_runs_as_written(block: Block) -> None:
    result = run_python(block.code)
    assert result.returncode == 0, f"{block.name} failed:\n{result.stderr}"
    if block.output is not None:
        assert result.stdout == block.output, f"{block.name} printed other than its output block"


def test_the_examples_that_need_a_tap_can_be_run_by_the_interop_test() -> None:
    """tests/interop/test_readme_tap.py runs these with a namespace of its own (CHIMNEY_NETNS)."""
    tap = [block for block in python_blocks() if block.needs_tap]
    assert tap, "the README's TAP example is gone: the interop test would run nothing"
    for block in tap:
        assert 'os.environ.get("CHIMNEY_NETNS"' in block.code, f"{block.name} hard-codes its namespace"


def test_every_output_block_belongs_to_an_example() -> None:
    for document in DOCUMENTS:
        stray = [b.name for b in blocks(document) if b.lang == "output"]
        assert not stray, f"output blocks that follow no python block: {stray}"


def test_an_output_block_pairs_with_the_python_block_right_before_it_only() -> None:
    text = (
        "```python\nprint(1)\n```\n\n```output\n1\n```\n\n"
        "text\n\n```python\nx = 2\n```\nprose\n```output\n2\n```\n"
    )
    first, second, stray = parse(text, "t.md")
    assert (first.lang, first.line, first.code, first.output) == ("python", 1, "print(1)\n", "1\n")
    assert (second.code, second.output) == ("x = 2\n", None)
    assert (stray.lang, stray.line) == ("output", 15)
