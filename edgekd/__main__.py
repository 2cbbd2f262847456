"""`python -m edgekd`: the `edgekd` command where its console script is not on PATH (an unactivated venv)."""

from edgekd.entry import main

main()
