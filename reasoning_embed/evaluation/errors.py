"""Evaluation errors a user can act on (entry points print them as one line)."""

from reasoning_embed.errors import ReasoningEmbedError


class BenchmarkDataMissingError(ReasoningEmbedError, OSError):
    """A benchmark's datasets are not in the local cache and the hub cannot be reached (or offline is set)."""


class EvaluationFailedError(ReasoningEmbedError, RuntimeError):
    """One or more tasks failed; ``summary`` (already written to disk) lists them under ``failed``."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


class EvaluationConfigError(ReasoningEmbedError, ValueError):
    """A benchmark, task list, local task or model specification is wrong."""
