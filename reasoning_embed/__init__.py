"""reasoning-embed: do reasoning (RL-tuned) LLM backbones make better text-embedding models?"""

__version__ = "0.1.0"

from pathlib import Path as _Path

CONF_DIR = _Path(__file__).resolve().parent / "conf"  # the Hydra configs ship inside the package


def _auto_precision() -> str:
    """``${re.auto_precision:}`` in a trainer config: bf16 mixed precision (the recipe's) on a GPU that has it,
    32-bit otherwise (a CPU, or a GPU without bf16)."""
    import torch

    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


def _register_resolvers() -> None:
    try:
        from omegaconf import OmegaConf
    except ImportError:  # a GPU machine with only the training stack (benchmarks/gpu_acceptance.py)
        return

    if not OmegaConf.has_resolver("re.auto_precision"):
        OmegaConf.register_new_resolver("re.auto_precision", _auto_precision)


_register_resolvers()
