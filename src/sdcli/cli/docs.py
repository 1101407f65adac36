"""The README's option tables, made from the commands themselves (as simonw/llm regenerates its docs), so the two
cannot drift: `python -m sdcli.cli.docs README.md` rewrites every table between `<!-- options: COMMAND -->` and
`<!-- end options -->`; `tests/test_docs.py` fails when the README is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click
import typer

from sdcli.cli.app import app

_BLOCK = re.compile(r"(<!-- options: ([\w-]+) -->\n)(.*?)(<!-- end options -->)", re.S)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(param: click.Parameter) -> str:
    """The default as --help shows it: the declared wording, else the value unless it is empty or off."""
    shown = getattr(param, "show_default", None)
    if isinstance(shown, str):
        return shown
    if shown is False or param.default is None or param.default is False or param.default in ((), ""):
        return ""
    return str(param.default)


def option_table(command: str) -> str:
    """The markdown table of a command's arguments and options: option, default, meaning (its --help text)."""
    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for param in typer.main.get_command(app).commands[command].params:
        if isinstance(param, click.Argument):
            name = (param.name or "").upper()
        else:
            name = ", ".join(param.opts + param.secondary_opts)
            if param.metavar:
                name += f" {param.metavar}"
        rows.append(f"| `{_cell(name)}` | {_cell(_default(param))} | {_cell(getattr(param, 'help', '') or '')} |")
    return "\n".join(rows) + "\n"


def render(readme: str) -> str:
    """`readme` with each options block made anew from its command."""
    return _BLOCK.sub(lambda m: m[1] + option_table(m[2]) + m[4], readme)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(render(path.read_text()))
