"""The ``text`` stage: Transformer token features of each transcript (the TER input)."""
from features.text import TextConfig, TextExtractor, model_checksum
from pipeline.stages import Stage, register

register(Stage(
    name="text", config_cls=TextConfig, build=lambda cfg, device: TextExtractor(cfg, device),
    version=TextExtractor.VERSION, checksum=lambda cfg: model_checksum(cfg.model),
    needs_audio=False, needs_text=True, needs_gpu=True, shard_size=500,
    help="token features (N, D) fp16 of a Hugging Face text encoder (default MiniLM-L6, 384-d)",
))
