"""Label normalisation to the 4 classes (neutral, happy, sad, angry)."""
from __future__ import annotations

#: Accepted spellings → class. IEMOCAP codes (neu/hap/exc/sad/ang) and common full names.
LABEL_ALIASES = {
    "neu": "neutral", "neutral": "neutral",
    "hap": "happy", "happy": "happy", "happiness": "happy", "joy": "happy",
    "exc": "happy", "excited": "happy", "excitement": "happy",
    "sad": "sad", "sadness": "sad",
    "ang": "angry", "angry": "angry", "anger": "angry",
}


def normalise_label(raw: str) -> str | None:
    """The class of a raw label, or None if it is not one of the four (or an alias)."""
    return LABEL_ALIASES.get(raw.strip().lower())
