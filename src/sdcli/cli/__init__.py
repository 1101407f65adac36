"""The command line: thin commands (`app`) over option declarations derived from the recipe (`options`)."""

from sdcli.cli.app import app, main

__all__ = ["app", "main"]
