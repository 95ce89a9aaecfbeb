"""User-facing errors: one line naming the problem and the fix; the CLI prints them without a traceback."""


class LinCompressError(Exception):
    """Base class for errors caused by user input (bad model.py, artifact, option)."""


class TargetError(LinCompressError):
    """model.py / Target problems."""


class NoAttentionError(LinCompressError):
    """The model has no attention the requested operation can work on."""


class TraceError(LinCompressError):
    """Neither torch.fx nor torch.export could trace the model."""


class ArtifactError(LinCompressError):
    """Missing, corrupt or mismatched artifact directory."""


class LinCompressWarning(UserWarning):
    """A result that is valid but probably not what was meant; the CLI prints it as one ``warning:`` line."""
