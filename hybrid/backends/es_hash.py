"""The hash of the text a vector was made from, stored beside the vector.

An application that changes a document's text with a partial update keeps hybrid's vector,
which then describes the old text. Each vector field ``F`` has a companion ``F_text_hash``
holding a short hash of the passage text (title + text) the vector was embedded from, so
``hybrid sync`` can tell a stale vector from a current one by reading text, not by
re-embedding it. One hash per vector field: a refresh filling the next field must not
inherit a hash that describes the active field's vectors.
"""

from __future__ import annotations

import hashlib
from typing import Any

from hybrid.encoder import passage_text
from hybrid.types import Document

HASH_SUFFIX = "_text_hash"
HASH_CHARS = 16  # of the hex sha256: a 64-bit fingerprint, enough to see that a text changed
# Compared from _source, never searched: not indexed. Doc values stay, as an `exists` query needs them.
HASH_MAPPING: dict[str, Any] = {"type": "keyword", "index": False}


def hash_field(vector_field: str) -> str:
    """The field holding the text hash of ``vector_field``'s vectors."""
    return f"{vector_field}{HASH_SUFFIX}"


def text_hash(doc: Document) -> str:
    """Hash of the text ``doc``'s vector is embedded from (what :func:`passage_text` gives)."""
    return hashlib.sha256(passage_text(doc).encode("utf-8")).hexdigest()[:HASH_CHARS]
