"""``cpc-signaling bench``: the load generator (see :mod:`.runner`), never imported by the server.

:mod:`.runner` plans a run, coordinates the worker processes and reports;
:mod:`.worker` is one generator process: raw WebSocket connections that send and count.
"""

from __future__ import annotations

import argparse

from . import runner
from .runner import add_arguments
from .targeting import run_targeting
from .worker import raise_file_limit

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> int:
    """A load run (:mod:`.runner`), or ``--targeting`` (:mod:`.targeting`)."""
    if args.targeting:
        raise_file_limit()
        return run_targeting(args, runner.Printer(args.json))
    return runner.main(args)
