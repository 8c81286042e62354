"""hybrid: dense retrieval training (SimANS) for people who run Elasticsearch.

The library is import-light: importing :mod:`hybrid` loads no torch, no JVM and no
Elasticsearch client. Heavy dependencies load inside the function that needs them.

Contract:
- the library never reads ``sys.argv`` or the environment; callers pass typed config
  objects (see :mod:`hybrid.config`);
- every error it raises on purpose is a :class:`hybrid.errors.HybridError` whose message
  says what went wrong and how to fix it;
- long work is a generator or takes a progress callback; nothing here draws to a terminal.
"""

from __future__ import annotations

__version__ = "0.1.0"
