"""One exception base for the project, with a few typed subclasses.

Messages name the item (utterance id, file) and say what to do.
"""


class MMERError(Exception):
    """Base class of every error this toolkit raises on purpose."""


class CorpusError(MMERError):
    """A corpus, manifest or work directory is unusable as a whole."""


class ItemError(MMERError):
    """One utterance cannot be processed; the rest of the work goes on.

    Extractors return (not raise) an ``ItemError`` in place of an item's output
    so that one bad item never loses the rest of a batch.
    """

    def __init__(self, item_id: str, reason: str):
        super().__init__(f"{item_id}: {reason}")
        self.item_id = item_id
        self.reason = reason


class StageError(MMERError):
    """A stage cannot run (unknown stage, bad parameter, model not found)."""


class CacheError(MMERError):
    """A cache entry (shard) is missing, incomplete or corrupt."""


class TrainingError(MMERError):
    """A trainer cannot run (no features, no usable fold, bad checkpoint)."""
