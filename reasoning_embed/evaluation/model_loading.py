"""Turn "the model to evaluate" into an ``Encoder``: the one loader (``reasoning_embed.models.loading``) with
the assets layer's builder — a run directory, its ``model/`` export, any sentence-transformers or Hugging Face
directory, a hub id, a backbone config name or ``minilm``; or an ``Encoder`` object (what training passes at
the end of a run). Keys of ``read`` that are not null override what the model carries."""

from __future__ import annotations

from reasoning_embed.evaluation.errors import EvaluationConfigError
from reasoning_embed.errors import ReasoningEmbedError
from reasoning_embed.models.loading import ENCODER_DEFAULTS as BACKBONE_DEFAULTS  # noqa: F401 - re-exported


def _config_error(e: ReasoningEmbedError) -> ReasoningEmbedError:
    """A spec that names no model is a configuration error of the evaluation (exit status 2)."""
    return EvaluationConfigError(str(e)) if "neither a run directory" in str(e) else e


def describe_model_spec(spec) -> tuple[str, str]:
    """(kind, path) for a spec: kind is run | export | sentence_transformers | backbone."""
    from reasoning_embed.models.loading import resolve_spec

    try:
        resolved = resolve_spec(spec)
    except ReasoningEmbedError as e:
        if _config_error(e) is e:
            raise
        raise _config_error(e) from e
    return resolved.kind, resolved.path


def load_encoder(spec, read: dict | None = None, device: str = "auto", paths: dict | None = None):
    """An ``Encoder`` for ``spec`` (see the module docstring), in eval mode on ``device``."""
    from reasoning_embed.assets import load_encoder as load
    from reasoning_embed.models.encoder import Encoder

    if isinstance(spec, Encoder):
        return spec
    try:
        return load(spec, read, device=device, paths=paths).eval()
    except ReasoningEmbedError as e:
        if _config_error(e) is e:
            raise
        raise _config_error(e) from e
