"""The one hash of a spec (a JSON-able description of what determines a cached result)."""

from __future__ import annotations

import hashlib
import json


def spec_hash(spec) -> str:
    """12 hex digits of the SHA-256 of ``spec``'s canonical JSON (sorted keys, no spaces; other types by ``str``)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# The libraries whose numerics decide what a cached model, mined set or score holds. A spec names their versions so
# that another install builds its own copy instead of reusing one its code would not reproduce: on 2026-12-01 the
# foundry's default triple, rebuilt from an unchanged spec and unchanged code after a fresh install, held other
# weights (rlvr's held-out accuracy 0.108 against 0.123). CPU kernels may differ too; they are not in the key.
NUMERIC_LIBRARIES = ("torch", "transformers", "sentence-transformers", "tokenizers")


def library_versions(names=NUMERIC_LIBRARIES) -> dict[str, str]:
    """{distribution: installed version} for ``names`` ("not installed" for a missing one), for a cache's spec."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
