"""User-facing errors. The CLI prints these as one line and exits non-zero; anything else is a bug."""


class RLPrunerError(Exception):
    """Base class for errors caused by the user's input or environment (not by a bug)."""


class ConfigError(RLPrunerError, ValueError):
    """An option or argument is out of range or inconsistent."""


class UnknownNameError(ConfigError, KeyError):
    """A model, dataset, criterion... name that is not registered. The message lists valid names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DataError(RLPrunerError):
    """A dataset cannot be found or read."""


class CheckpointError(RLPrunerError):
    """A checkpoint or saved model is missing, corrupt, hostile or does not match the model."""


class ExportError(RLPrunerError):
    """An ONNX/TorchScript export failed, or the exported file does not compute what the model does."""


class UnsupportedOperation(RLPrunerError):
    """An operation whose channel semantics are unknown, raised in strict tracing mode."""


class PruningError(RLPrunerError):
    """A pruning request that cannot be carried out (e.g. it would empty a group)."""


class SurgeryError(PruningError):
    """Surgery cannot apply the requested slices or shapes to this model (callers such as io may
    wrap it in their own error type)."""


class Interrupted(RLPrunerError):
    """The user stopped a run (Ctrl-C, SIGTERM) at a safe point; it can be resumed."""

    exit_code = 130


class DivergenceError(ConfigError):
    """Training produced a non-finite loss (NaN/inf) and retrying at lower learning rates did not help."""
