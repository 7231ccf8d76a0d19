"""The ``mel`` stage: 80-bin log-mel spectrograms (the SER reconstruction target)."""
from features.mel import MelExtractor
from pipeline.stages import Stage, register

register(Stage(
    name="mel", extractor=MelExtractor, needs_audio=True, needs_gpu=False, shard_size=200,
    help="80-bin log-mel spectrogram, AutoVC normalisation, 20 ms frames",
))
