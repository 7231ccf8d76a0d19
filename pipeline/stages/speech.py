"""Stage ``speech`` (``wav2vec`` until 0.7): all hidden states of a speech encoder per 20 ms frame (features/speech_encoder.py)."""
from features.speech_encoder import SpeechEncoderExtractor
from pipeline.stages import Stage, register

register(Stage(
    name="speech",
    extractor=SpeechEncoderExtractor,
    needs_audio=True,
    needs_gpu=True,
    help="All hidden states (T, L, D) fp16 of a speech encoder: a transformers folder "
         "(wav2vec2, HuBERT, WavLM, data2vec, Whisper), a fairseq wav2vec2 .pt, or an installed "
         "Whisper short name (whisper-base, whisper-tiny.en).",
))
