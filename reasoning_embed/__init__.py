"""reasoning-embed: do reasoning (RL-tuned) LLM backbones make better text-embedding models?"""

__version__ = "0.1.0"

from pathlib import Path as _Path

CONF_DIR = _Path(__file__).resolve().parent / "conf"  # the Hydra configs ship inside the package
