"""reasoning-embed: do reasoning (RL-tuned) LLM backbones make better text-embedding models?"""

__version__ = "0.1.0"
