"""Versioned Elasticsearch settings/mapping templates, read with importlib.resources.

``index-v<N>.json`` holds one full create-index body with defaults; the library fills in
the parts a user chooses (dims, similarity, BM25 k1/b, analyzer, HNSW options).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

LATEST = 1


def load_template(version: int = LATEST) -> dict[str, Any]:
    """The raw template ``index-v<version>.json`` as a dict."""
    text = resources.files(__name__).joinpath(f"index-v{version}.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data
