"""CLI subcommands: each module defines HELP, add_arguments(parser) and run(args) -> int.

The options and loading code they share live in `common`; a command never imports another command.
"""
