"""cpc-signaling: serve, and the tools around it.

A mistake on the command line or in a CPC_* variable gets one line on stderr
(``cpc-signaling: error: ...``) and exit code 2; a server that cannot start
(port in use, Redis refusing its instance id) gets one line and exit code 1.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .server.config import Config, add_arguments
from .server.logs import setup_logging
from .tokens import add_token_arguments, token_command

DESCRIPTION = (
    "Live presence for collaborative applications (CPC: Collaborative Presence and "
    "Comments) over WebSocket. 'cpc-signaling serve' runs the server."
)


class Parser(argparse.ArgumentParser):
    """argparse, with one-line errors and help without the source's code markup."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def format_help(self) -> str:
        # Help texts mark flags and claims as `code` for the generated docs; not on a terminal.
        return super().format_help().replace("`", "")


def fail(message: str, code: int = 2) -> int:
    print(f"cpc-signaling: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="cpc-signaling", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{serve,token,bench}")
    serve_parser = commands.add_parser(
        "serve", help="run the signaling server", description="Run the signaling server."
    )
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
    if args.command is None:
        parser.error("say what to do: serve, token or bench")
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(args)
    if args.command == "token":
        return token_command(args)
    return serve(args)


def serve(args: argparse.Namespace) -> int:
    try:
        config = Config.from_namespace(args)
    except ValueError as exc:  # a CPC_* variable that is not of its option's type
        return fail(str(exc))
    from .server.auth import config_problem

    problem = config_problem(config)
    if problem:
        return fail(problem)
    if config.redis_url and not _redis_installed():
        return fail(
            "--redis-url needs the redis extra, which is not installed: "
            "pip install 'cpc-signaling[redis]'"
        )
    setup_logging(config.log_level, config.log_format)
    from .backends import BackendStartError
    from .server.runner import run

    try:
        run(config)
    except BackendStartError as exc:
        return fail(str(exc), 1)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return fail(
                f"cannot listen on {config.host}:{config.port}: address already in use "
                "(another server runs there: stop it, or choose another --port)",
                1,
            )
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
            return fail(f"cannot listen on {config.host}:{config.port}: {exc.strerror}", 1)
        raise
    except KeyboardInterrupt:  # a second Ctrl-C while draining
        return 130
    return 0


def _redis_installed() -> bool:
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
