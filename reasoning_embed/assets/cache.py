"""Built-on-first-use artefacts, keyed by a hash of their full spec.

``build_once(root, name, spec, build)`` returns ``<root>/<name>-<hash of spec>``, building it with
``build(staging_dir)`` the first time. A different spec has a different directory, so a cache never returns
another spec's artefact. The spec holds the *identity* of what the artefact depends on (the package's and the
numeric libraries' versions, a hash of model files or of a corpus manifest), never an absolute path: a moved
checkout reuses its caches.
Concurrent builders (DDP ranks, parallel jobs) take a file lock: the first builds, the others wait and reuse.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from reasoning_embed.utils.hashing import spec_hash
from reasoning_embed.utils.io import atomic_dir

SPEC_FILE = "asset.json"


def _canonical(spec: dict) -> dict:
    return json.loads(json.dumps(spec, sort_keys=True, default=str))  # tuples -> lists, as read back


def cached(target: Path, spec: dict) -> bool:
    try:
        return json.loads((target / SPEC_FILE).read_text()).get("spec") == _canonical(spec)
    except (OSError, ValueError):
        return False


def build_once(root: str | Path, name: str, spec: dict, build: Callable[[Path], None], log=print) -> Path:
    """``<root>/<name>-<hash>``: built by ``build(staging)`` under a file lock unless already there."""
    from filelock import FileLock

    root = Path(root)
    target = root / f"{name}-{spec_hash(spec)}"
    if cached(target, spec):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if cached(target, spec):  # another process built it while we waited
            return target
        for stale in root.glob(f".{target.name}-*"):  # a killed build's staging (we hold the only lock)
            shutil.rmtree(stale, ignore_errors=True)
        with atomic_dir(target) as staging:  # replaces an incomplete earlier build (no matching asset.json)
            build(staging)
            (staging / SPEC_FILE).write_text(json.dumps({"spec": _canonical(spec)}, indent=2) + "\n")
        log(f"[reasoning-embed] built {target}")
    return target


def package_identity() -> str:
    from reasoning_embed import __version__

    return f"reasoning-embed=={__version__}"


def build_identity(libraries=None) -> dict:
    """What every built asset (or cached score) depends on besides its own inputs: this package's version and the
    versions of ``libraries`` (default: those whose numerics decide a model's weights or embeddings,
    ``utils.hashing.NUMERIC_LIBRARIES``)."""
    from reasoning_embed.utils.hashing import NUMERIC_LIBRARIES, library_versions

    return {"package": package_identity(), "libraries": library_versions(libraries or NUMERIC_LIBRARIES)}
