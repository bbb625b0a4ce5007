"""Record every user error the tests check, for the generated table in docs/errors.md.

Active only when RLPRUNER_ERROR_LOG names a file (scripts/error_table.py sets it): then every
`pytest.raises` block that catches an `RLPrunerError`, and every `rlpruner.cli.main` call that
exits non-zero, appends one JSON line (the test, the entry point, the error, its message, the exit
status). Installed by conftest.py before the test modules import the CLI.
"""
from __future__ import annotations

import io
import json
import os
import sys
from typing import Any

import pytest


def install(path: str) -> None:
    import rlpruner.cli
    from rlpruner.errors import RLPrunerError

    def record(**entry: Any) -> None:
        entry["test"] = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
        with open(path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    real_raises = pytest.raises

    class Recording:
        def __init__(self, inner: Any):
            self.inner = inner

        def __enter__(self) -> Any:
            return self.inner.__enter__()

        def __exit__(self, kind: Any, value: Any, tb: Any) -> bool:
            handled = self.inner.__exit__(kind, value, tb)
            if handled and isinstance(value, RLPrunerError):
                record(api="python", error=type(value).__name__, message=str(value),
                       exit=getattr(value, "exit_code", 2))
            return handled

    def raises(*args: Any, **kwargs: Any) -> Any:
        inner = real_raises(*args, **kwargs)
        return Recording(inner) if len(args) <= 1 and "func" not in kwargs else inner

    pytest.raises = raises

    real_main = rlpruner.cli.main

    class Tee(io.StringIO):
        def __init__(self, other: Any):
            super().__init__()
            self.other = other

        def write(self, text: str) -> int:
            self.other.write(text)
            return super().write(text)

    def main(argv: list[str] | None = None) -> int:
        stderr, sys.stderr, code = sys.stderr, Tee(sys.stderr), 0
        try:
            code = real_main(argv)
        except SystemExit as exc:  # argparse: bad arguments
            code = exc.code
            raise
        finally:
            tee, sys.stderr = sys.stderr, stderr
            if code:
                lines = [line for line in tee.getvalue().splitlines() if line.strip()]
                record(api="cli", argv=list(argv or []), exit=code, message=lines[-1] if lines else "")
        return code

    rlpruner.cli.main = main
