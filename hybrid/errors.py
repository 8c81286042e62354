"""Every error the library raises on purpose. Each message states the fix."""

from __future__ import annotations


class HybridError(Exception):
    """Base class: the CLI prints ``Error: <message>`` and exits 1."""


class ConfigError(HybridError):
    """An option or a combination of options is invalid."""


class CorpusError(HybridError):
    """A corpus, queries or qrels file cannot be read."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class UnknownFormatError(CorpusError):
    """The corpus format was not recognised or is not supported."""


class ModelError(HybridError):
    """The encoder model cannot be loaded."""


class ModelMismatchError(ModelError):
    """A model other than the one that made an index's vectors was asked to use them."""


class JavaNotFoundError(HybridError):
    """No Java 21+ runtime was found for pyserini/Anserini."""


class BackendError(HybridError):
    """A search backend failed."""


class IndexNotFoundError(BackendError):
    """The named index does not exist."""


class IndexBusyError(BackendError):
    """Another process is writing the index."""


class DimensionMismatchError(BackendError):
    """Vectors do not have the dimension the index was created with."""


class ClusterUnreachableError(BackendError):
    """The Elasticsearch cluster cannot be reached."""


class CountMismatchError(BackendError):
    """The backend holds a different number of documents than were written."""


class CheckpointError(HybridError):
    """A training checkpoint that cannot be read."""
