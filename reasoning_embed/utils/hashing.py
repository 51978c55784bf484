"""The one hash of a spec (a JSON-able description of what determines a cached result)."""

from __future__ import annotations

import hashlib
import json


def spec_hash(spec) -> str:
    """12 hex digits of the SHA-256 of ``spec``'s canonical JSON (sorted keys, no spaces; other types by ``str``)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
