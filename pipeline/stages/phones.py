"""Stage ``phones``: forced alignment -> 128-id phone sequences on the 20 ms grid (features/phones.py).

CPU only. Parameters (``-p phones.NAME=VALUE``): ``aligner`` embedded|gentle, ``gentle_url``,
``gentle_timeout_s``, ``gentle_retries``, ``language``, ``voice``, ``rate``, ``oov``,
``position_fallback``, ``on_failure`` uniform|error (see ``features.phones.PhonesConfig``).
"""
from __future__ import annotations

import importlib.metadata

from core.hashing import files_checksum
from features.phones import PhonesConfig, PhonesExtractor
from pipeline.stages import Stage, register


def _checksum(config: PhonesConfig) -> str:
    """What the embedded aligner's output depends on besides code: espeak-ng and CMUdict."""
    if config.aligner != "embedded":
        return ""  # a Gentle server is outside our reach; its answers are not cached by model
    import espeakng_loader

    try:
        cmu = importlib.metadata.version("cmudict")
    except importlib.metadata.PackageNotFoundError:
        cmu = "none"
    return f"{files_checksum([espeakng_loader.get_library_path()])}-cmudict{cmu}"


register(Stage(
    name="phones", config_cls=PhonesConfig, build=lambda cfg, device: PhonesExtractor(cfg, device),
    version=PhonesExtractor.VERSION, checksum=_checksum,
    needs_audio=True, needs_text=True, needs_gpu=False, shard_size=200,
    help="forced alignment (embedded espeak+DTW, or a Gentle server): a phone id per 20 ms "
         "frame (official 128-id vocabulary) plus word and phone times",
))
