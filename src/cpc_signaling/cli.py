"""``cpc-signaling``: serve, and the tools around it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .server.config import Config, add_arguments
from .server.logs import setup_logging
from .tokens import add_token_arguments, token_command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpc-signaling", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the signaling server")
    add_arguments(serve_parser)
    token_parser = commands.add_parser(
        "token", help="mint a development JWT from the configured secret or private key"
    )
    add_token_arguments(token_parser)
    bench_parser = commands.add_parser(
        "bench", help="load generator: D documents x U users against a server (or --spawn one)"
    )
    from .bench import add_arguments as add_bench_arguments

    add_bench_arguments(bench_parser)
    args = parser.parse_args(argv)
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(args)
    if args.command == "token":
        return token_command(args)
    if args.command == "serve":
        config = Config.from_namespace(args)
        from .server.auth import config_problem

        problem = config_problem(config)
        if problem:
            serve_parser.error(problem)
        setup_logging(config.log_level, config.log_format)
        from .backends import BackendStartError
        from .server.runner import run

        try:
            run(config)
        except BackendStartError as exc:
            print(f"cpc-signaling: error: {exc}", file=sys.stderr)
            return 1
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
