"""One exception base for the project, with a few typed subclasses.

Messages name the item (utterance id, file) and say what to do.
"""


class MMERError(Exception):
    """Base class of every error this toolkit raises on purpose.

    ``then``: the steps that fix it, as command-line arguments without the program name (e.g.
    ``"extract --stage mel"``). The library never spells out how the program is invoked; the
    command line renders each step with its own name (``mmer extract --stage mel``), and ``str()``
    names the steps for library users.
    """

    def __init__(self, message: str = "", *, then: str | tuple[str, ...] = ()):
        super().__init__(message)
        self.message = message
        self.then = (then,) if isinstance(then, str) else tuple(then)

    def __str__(self) -> str:
        return self.render("")

    def render(self, program: str) -> str:
        """The message, then its fixing steps, each as ``program step``."""
        if not self.then:
            return self.message
        steps = " then ".join(f"`{(program + ' ' + step).strip()}`" for step in self.then)
        return f"{self.message}: run {steps}"


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
