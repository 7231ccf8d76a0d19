"""Loading transformers folders without ever running code they ship, and without prompting."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from core.errors import StageError


def from_pretrained(cls: Any, folder: str | Path, what: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(folder)`` offline with ``trust_remote_code=False``: a folder whose
    config points to its own Python code (``auto_map`` + ``*.py``) loads the standard class of
    its ``model_type`` or fails with a StageError naming the folder — never a "run custom code?"
    prompt in the middle of an unattended extract, never a raw traceback."""
    try:
        return cls.from_pretrained(folder, local_files_only=True, trust_remote_code=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - a folder's fault, in whatever form transformers or
        # huggingface_hub raise it (ValueError, OSError, KeyError, a strict-dataclass validation
        # error for a config value of the wrong type); the first line says what
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise StageError(f"{what}: cannot load the model folder {folder} ({first}); it must hold a "
                         "standard transformers model (code shipped in the folder is never run)") from None
