"""Errors a user can act on. Entry points print these as one clear line instead of a traceback."""


class ReasoningEmbedError(Exception):
    """Base class: the message says what is wrong and what to do."""


class DataFormatError(ReasoningEmbedError, ValueError):
    """A training/evaluation file is malformed; the message names file, line and key."""

    def __init__(self, path, line: int | None, key: str | None, expected: str):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        what = f"key {key!r}: " if key is not None else ""
        super().__init__(f"{where}: {what}{expected}")
        self.path, self.line, self.key = path, line, key


class ConfigValueError(ReasoningEmbedError, ValueError):
    """A configuration key holds a value the code cannot use; the message names the key and what it expects."""


class BackboneNotAvailableError(ReasoningEmbedError, OSError):
    """A hub backbone is neither a local directory nor in the local Hugging Face cache while offline."""


class AttentionCheckError(ReasoningEmbedError, RuntimeError):
    """The loaded model does not attend the way the configured attention mode says."""


class TokenizerMismatchError(ReasoningEmbedError, ValueError):
    """Token-level comparison of two models whose tokenizers split the same texts differently."""
