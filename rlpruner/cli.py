"""`rlpruner` command line: one subcommand per module in `rlpruner.commands`."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from .errors import RLPrunerError

# Each module defines HELP, add_arguments(parser) and run(args) -> int.
COMMANDS = ("train", "evaluate", "prune", "compress", "demo", "export", "latency")


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line on stderr and exit status 2, like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rlpruner", description="Structured pruning for PyTorch CNNs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"rlpruner.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # recorded by compress, for the report
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    rank = os.environ.get("RANK", "0") if os.environ.get("WORLD_SIZE", "1") != "1" else "0"
    prog = f"rlpruner {args.command}" + ("" if rank == "0" else f" [rank {rank}]")  # torchrun: whose message
    try:
        return int(args._run(args) or 0)
    except RLPrunerError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` & co.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if "rlpruner.distributed" in sys.modules:  # a torchrun run: leave the process group cleanly
            from .distributed import leave

            leave()


def entry(argv: list[str] | None = None) -> None:
    """The process's entry point (`rlpruner`, `python -m rlpruner`): `main`, then exit with its code.
    A torchrun worker, its process group destroyed by `main`, ends without the interpreter's teardown,
    in which PyTorch's gloo threads can still abort a finished run (SIGABRT, "terminate called
    without an active exception"); every file is closed and the output is flushed first."""
    code = main(argv)
    if os.environ.get("WORLD_SIZE", "1") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
