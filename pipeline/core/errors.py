"""One exception type for user-facing failures.

Every message says what went wrong *and* what to do next. Internal bugs are ordinary exceptions
(``AssertionError``, ``TypeError``...) and are never wrapped in :class:`PipelineError`.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A failure the user can fix: bad input, missing dependency, impossible request.

    Args:
        message: what went wrong.
        hint: what to do next (printed on its own line after ``->``).
    """

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  -> {hint}")


class StageSkipped(Exception):
    """Raised inside a stage to say it cannot run here (no GPU, no TensorRT...), with the reason.

    The orchestrator records the stage as ``skipped`` with ``reason`` in the report and goes on.
    """

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class RunInterrupted(PipelineError):
    """The user pressed Ctrl-C: the report was written, and the same command resumes (exit code 130)."""
