"""The `edgekd` console script's entry: Ctrl-C is the command's from this module's first line on.

`edgekd.cli` imports typer and rich at module level (a third of a second), and a console script imports the
module of its entry point before it calls it: a Ctrl-C in that import ended the process by the signal, with a
traceback. This module imports nothing but `edgekd.interrupts`, sets the process's handlers, and only then
imports the CLI. What no code of edgekd can handle is a signal before this runs: Python's start-up (site and
the .pth files of the environment) and the console script's own `import sys`. Once the command has ended, the
process ignores Ctrl-C: its exit code stands (see `interrupts.ignore_after_the_command`).
"""

from __future__ import annotations

from edgekd import interrupts


def main() -> None:
    """Run the `edgekd` command in this process, which ends with it."""
    interrupts.exit_outside_commands()
    try:
        from edgekd.cli import main as cli_main

        cli_main()
    finally:
        interrupts.ignore_after_the_command()


if __name__ == "__main__":
    main()
