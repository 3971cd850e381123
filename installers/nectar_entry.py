"""The frozen bundle's entry point: the ``nectar`` executable, the same command line as ``python -m agent``.

Child processes (the DHT node, the servers, the benchmark) are this executable again with their subcommand
(``agent/executable.py``). ``freeze_support`` lets a ``spawn``-started multiprocessing child (Windows, macOS) run
its task instead of the command line. Started without arguments (a double click, the Finder) ``agent.cli`` runs
the app, as ``nectar run``.
"""

import multiprocessing
import sys


def main() -> int:
    multiprocessing.freeze_support()
    from agent.cli import main as nectar_main

    return nectar_main()


if __name__ == "__main__":
    sys.exit(main())
