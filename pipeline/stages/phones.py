"""Stage ``phones``: forced alignment -> 128-id phone sequences on the 20 ms grid (features/phones.py).

CPU only. Parameters (``-p phones.NAME=VALUE``): ``aligner`` embedded|gentle, ``gentle_url``,
``gentle_timeout_s``, ``gentle_retries``, ``language``, ``voice``, ``rate``, ``oov``,
``position_fallback``, ``on_failure`` uniform|error (see ``features.phones.PhonesConfig``).
"""
from __future__ import annotations

from features.phones import PhonesExtractor
from pipeline.stages import Stage, register

register(Stage(
    name="phones", extractor=PhonesExtractor,
    needs_audio=True, needs_text=True, needs_gpu=False, shard_size=200,
    help="forced alignment (embedded espeak+DTW, or a Gentle server): a phone id per 20 ms "
         "frame (official 128-id vocabulary) plus word and phone times",
))
