"""The one probe of the local Hugging Face cache and of the hub's reachability (models and datasets).

Locations are read from the environment when asked (``HF_HUB_CACHE`` / ``HF_HOME`` / ``XDG_CACHE_HOME``,
``HF_DATASETS_CACHE``), not frozen at import, so a process that changes them (tests, launchers) is seen.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hf_home() -> Path:
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser()


def hub_cache_dir() -> Path:
    env = os.environ
    return Path(env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or hf_home() / "hub").expanduser()


def datasets_cache_dir() -> Path:
    return Path(os.environ.get("HF_DATASETS_CACHE") or hf_home() / "datasets").expanduser()


def offline_reason(variables=OFFLINE_VARIABLES) -> str | None:
    """``"HF_HUB_OFFLINE=1 is set"`` (or the first of ``variables`` that is on), else None."""
    for var in variables:
        if os.environ.get(var, "0").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}=1 is set"
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def cached_snapshot(repo_id: str, revision: str | None = None, repo_type: str = "model",
                    filename: str = "config.json") -> Path | None:
    """The snapshot directory of ``repo_id`` in the hub cache when it holds ``filename``, else None."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir(), revision=revision,
                                    repo_type=repo_type)
    return Path(cached).parent if isinstance(cached, str) else None
