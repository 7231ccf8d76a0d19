"""Stage registry: every feature stage declares itself in a module of this package.

A module here calls :func:`register` with a :class:`Stage`. Modules are discovered
automatically, so adding a stage means adding one file. The registry knows nothing of any
particular model; it only maps a name to how to build its extractor and what it needs.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from core.errors import StageError

log = logging.getLogger(__name__)

#: Former stage names, still accepted wherever a stage is named (a warning says the new name).
ALIASES = {"wav2vec": "speech"}
_WARNED: set[str] = set()


def canonical(name: str, warn: bool = True) -> str:
    """The stage's current name: ``wav2vec`` (until 0.7) is ``speech``, the all-layer features of
    whichever speech encoder the stage is given (Whisper by default, wav2vec 2.0, HuBERT, …).
    ``warn``: say so once (for names a user typed; not for names read from older files)."""
    new = ALIASES.get(name)
    if new is None:
        return name
    if warn and name not in _WARNED:
        _WARNED.add(name)
        log.warning("the stage %r is now called %r (the old name still works, until 0.9)", name, new)
    return new


@dataclass(frozen=True)
class Stage:
    """A feature stage: its extractor, what it needs, how it is scheduled.

    The extractor class (:class:`features.base.Extractor`) carries the stage's identity:
    ``VERSION``, its frozen ``Config`` (whose fields are the stage parameters, ``-p
    name.field=value``) and ``weights_checksum(config)``."""

    name: str
    extractor: type  # built as extractor(config, device), once per worker process
    needs_audio: bool = True
    needs_text: bool = False
    needs_gpu: bool = False  # uses a GPU when present (one worker process per GPU)
    upstream: tuple[str, ...] = ()
    #: Utterances per shard (one Dask task).
    shard_size: int = 200
    #: Optional post-step over all utterances' outputs, e.g. per-speaker means:
    #: ``finalize(reader, utterances, config) -> {key: array}``, stored next to the shards.
    finalize: Callable | None = None
    help: str = ""
    #: Optional line for the user before the stage computes anything, e.g. a faster setting for
    #: this hardware: ``advice(config, on_gpu) -> str | None``.
    advice: Callable[[Any, bool], str | None] | None = None
    #: Only for tests: hidden from ``extract --stage all`` and ``--help``.
    test_only: bool = False

    @property
    def config_cls(self) -> type:
        return self.extractor.Config

    def make_config(self, params: Mapping[str, Any] | None = None):
        """Config from defaults overridden by ``params`` (strings are converted to field types)."""
        params = dict(params or {})
        fields = {f.name: f for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise StageError(
                f"stage {self.name!r} has no parameter(s) {unknown}; "
                f"known: {sorted(fields)}"
            )
        default = self.config_cls()
        kwargs = {k: convert_value(getattr(default, k), v, f"{self.name}.{k}") for k, v in params.items()}
        return dataclasses.replace(default, **kwargs)


def convert_value(default: Any, value: Any, where: str) -> Any:
    """A command-line string as the type of ``default`` (bool words, numbers, comma tuples)."""
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, (int, float)):
            return type(default)(value)
        if isinstance(default, tuple):
            return tuple(type(default[0])(v) if default else v for v in value.split(","))
    except ValueError as e:
        raise StageError(f"{where}={value!r}: expected {type(default).__name__}") from e
    return value


_REGISTRY: dict[str, Stage] = {}
_DISCOVERED = False


def register(stage: Stage) -> Stage:
    _REGISTRY[stage.name] = stage
    return stage


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


def get_stage(name: str) -> Stage:
    _discover()
    name = canonical(name)
    if name not in _REGISTRY:
        raise StageError(f"unknown stage {name!r}; available: {', '.join(stage_names())}")
    return _REGISTRY[name]


def stage_names(include_test: bool = False) -> list[str]:
    _discover()
    return [n for n, s in _REGISTRY.items() if include_test or not s.test_only]


def resolve_order(names: list[str]) -> list[str]:
    """Names plus their upstream stages, upstream first."""
    out: list[str] = []

    def visit(n: str) -> None:
        for u in get_stage(n).upstream:
            visit(u)
        if n not in out:
            out.append(n)

    for n in names:
        visit(n)
    return out
