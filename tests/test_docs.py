"""The README's option tables are the commands' own: made from them by `make docs`, and checked here."""

from __future__ import annotations

from pathlib import Path

from sdcli.cli.docs import option_table, render

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_option_tables_are_up_to_date():
    text = README.read_text()
    assert render(text) == text, "README.md's option tables are stale: run `make docs`"


def test_every_workflow_command_has_a_table_and_shares_the_recipe_options():
    text = README.read_text()
    tables = {command: option_table(command) for command in ("generate", "sweep-guidance", "batch")}
    for command, table in tables.items():
        assert f"<!-- options: {command} -->\n{table}<!-- end options -->" in text
    # The options declared once in the recipe read the same in every command that takes them.
    rows = {command: set(table.splitlines()) for command, table in tables.items()}
    for row in ("--guidance-interval LO,HI", "-m, --model", "--dtype", "--cfg-rescale PHI"):
        found = [next(line for line in rows[c] if line.startswith(f"| `{row}`")) for c in rows]
        assert len(set(found)) == 1, found
