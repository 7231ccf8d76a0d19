"""Stage ``speech`` (``wav2vec`` until 0.7): all hidden states of a speech encoder per 20 ms frame (features/speech_encoder.py)."""
from features.speech_encoder import SpeechEncoderExtractor, pads_to_30s
from pipeline.stages import Stage, register


def cpu_advice(config, on_gpu: bool) -> str | None:
    """On a CPU, a faithful Whisper runs every clip as a 30-s window: say what is faster."""
    if on_gpu or not pads_to_30s(config):
        return None
    return ("speech: Whisper runs every clip padded to a 30-s window (its faithful mode); on a CPU "
            "-p speech.unpadded_whisper=true (or --recipe cpu) runs each clip at its own length — "
            "`extract` of 339 EmoDB clips of 2-3 s on 2 cores: 49 s against 340 s — with the deep "
            "layers drifting a little (README, 'Which model to train')")


register(Stage(
    name="speech",
    extractor=SpeechEncoderExtractor,
    needs_audio=True,
    needs_gpu=True,
    help="All hidden states (T, L, D) fp16 of a speech encoder: a transformers folder "
         "(wav2vec2, HuBERT, WavLM, data2vec, Whisper), a fairseq wav2vec2 .pt, or an installed "
         "Whisper short name (whisper-base, whisper-tiny.en).",
    advice=cpu_advice,
))
