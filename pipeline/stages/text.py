"""The ``text`` stage: Transformer token features of each transcript (the TER input)."""
from features.text import TextExtractor
from pipeline.stages import Stage, register

register(Stage(
    name="text", extractor=TextExtractor,
    needs_audio=False, needs_text=True, needs_gpu=True, shard_size=500,
    help="token features (N, D) fp16 of a Hugging Face text encoder (default MiniLM-L6, 384-d)",
))
