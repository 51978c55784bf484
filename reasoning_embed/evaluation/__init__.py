"""Evaluation: MTEB / BRIGHT through mteb 2.x and offline local tasks.

``evaluate_model(model, benchmark, out_dir, allow_failures=False, ...)`` is the one call (the CLI
``python -m reasoning_embed.evaluate`` and the end of training use it); ``summary_metrics(summary)``
flattens its result for a logger or ``metrics.json``. mteb is imported only when a function needs it.
"""

from reasoning_embed.evaluation.runner import evaluate_model
from reasoning_embed.evaluation.summary import summary_metrics

__all__ = ["evaluate_model", "summary_metrics"]
