"""`python -m sdcli`: the same command line as the `sdcli` console script."""

from sdcli.cli import main

main()
