"""Speech synthesis with phoneme timings from the libespeak-ng bundled by ``espeakng-loader``.

A thin ctypes wrapper (no system espeak-ng needed). Synthesis runs in espeak's synchronous
mode; the synthesis callback collects the audio and the PHONEME / WORD events, so every
phoneme comes with its start and end time in the returned audio. libespeak-ng keeps global
state, so all calls go through one module-level lock and each process (a forked child too)
initialises its own copy. Because libespeak-ng carries hidden state from one utterance to the
next, the library is unloaded and reloaded (about 3 ms) before each synthesis after the first,
which makes the output a pure function of the arguments.

    >>> s = synthesize("hello world", voice="en+m3")
    >>> s.audio.shape, s.sample_rate          # (n,) float32 in [-1, 1], 22050
    >>> s.phonemes[:2]                        # [('h', 0.0, 0.06), ('@', 0.06, 0.11)] ...

espeak stamps its phoneme events some 40 ms after the acoustic start of the phoneme (see
:func:`event_lag`); the times returned here are corrected for that.

Phoneme symbols are espeak's own mnemonics (e.g. ``aI``, ``@``, ``_:`` for a pause), as in
``espeak-ng -x``; ``features.espeak_phones`` maps them to ARPAbet classes.
"""
from __future__ import annotations

import _ctypes
import atexit
import ctypes
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field

import numpy as np

from core.errors import MMERError

log = logging.getLogger(__name__)

# espeak_AUDIO_OUTPUT, espeak_EVENT_TYPE, espeak_PARAMETER and flag values (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_EV_LIST_TERMINATED, _EV_WORD, _EV_SENTENCE, _EV_END, _EV_MSG_TERMINATED, _EV_PHONEME = 0, 1, 2, 5, 6, 7
_INIT_PHONEME_EVENTS = 0x0001
_INIT_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_P_RATE, _P_VOLUME, _P_PITCH, _P_RANGE = 1, 2, 3, 4


class EspeakError(MMERError):
    """libespeak-ng could not be loaded or refused a request (unknown voice, bad text)."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


@dataclass
class Synthesis:
    """One synthesized utterance with espeak's own timings (seconds from the audio start)."""

    audio: np.ndarray  # (n,) float32 mono in [-1, 1]
    sample_rate: int
    phonemes: list[tuple[str, float, float]] = field(default_factory=list)  # (mnemonic, start, end)
    words: list[tuple[float, float]] = field(default_factory=list)  # (start, end) per word
    #: (text_position, length) of each word in the input text (1-based character position).
    word_text: list[tuple[int, int]] = field(default_factory=list)
    #: Index into ``words`` of the word each phoneme belongs to (-1: before the first word).
    phoneme_word: list[int] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


_LOCK = threading.RLock()
_STATE: dict = {}  # lib, sample_rate, pid, callback (kept alive), collector, voice
_RTLD_NOLOAD = 4  # glibc dlfcn.h
_PRIVATE_COPY: dict = {}  # pid -> path of this process's private copy of the library


def _library_path() -> str:
    """Path to dlopen: the bundled library, or a private copy when it is already loaded in this
    process by someone else (dlopen would then hand back that copy, state and all)."""
    try:
        import espeakng_loader
    except ImportError as e:  # pragma: no cover - the package is in requirements
        raise EspeakError("package 'espeakng-loader' is not installed: pip install espeakng-loader") from e
    path = _PRIVATE_COPY.get(os.getpid(), espeakng_loader.get_library_path())
    if not hasattr(_ctypes, "dlclose"):  # pragma: no cover - not POSIX
        return path
    try:
        _ctypes.dlclose(_ctypes.dlopen(path, _RTLD_NOLOAD))
    except OSError:
        return path  # not loaded: a dlopen gives pristine state
    tmp = tempfile.mkdtemp(prefix="mmer-espeak-")
    copy = os.path.join(tmp, "libespeak-ng.so")
    shutil.copyfile(path, copy)
    _PRIVATE_COPY[os.getpid()] = copy
    atexit.register(shutil.rmtree, tmp, True)
    log.info("libespeak-ng is already loaded in this process; using a private copy %s", copy)
    return copy


def _unload() -> None:
    """dlclose the library so that its static state (pitch flutter phase, noise generator,
    resampler buffers...) is discarded: libespeak-ng carries it from one utterance to the next,
    which makes repeated synthesis of the same text differ by a few samples and milliseconds."""
    lib = _STATE.pop("lib", None)
    _STATE.clear()
    if lib is not None and hasattr(_ctypes, "dlclose"):
        _ctypes.dlclose(lib._handle)


def _lib(fresh: bool = False):
    """The initialised library for this process; ``fresh`` reloads it with pristine state."""
    if _STATE.get("pid") == os.getpid() and not fresh:
        return _STATE["lib"]
    if "lib" in _STATE:  # stale state, or a forked child holding its parent's loaded copy
        _unload()
    import espeakng_loader

    try:
        lib = ctypes.CDLL(_library_path())
    except OSError as e:  # pragma: no cover
        raise EspeakError(f"cannot load libespeak-ng from espeakng-loader: {e}") from e
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint),
                                 ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
    data = espeakng_loader.get_data_path().encode()
    sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data,
                               _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT)
    if sr <= 0:
        raise EspeakError(f"espeak_Initialize failed (returned {sr}); data path {data.decode()}")

    collector: dict = {"chunks": [], "events": []}

    def callback(wav, n, events):
        if wav and n > 0:
            collector["chunks"].append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EV_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EV_PHONEME:
                sym = bytes(ev.id.string).split(b"\0", 1)[0].decode("utf-8", "replace")
                collector["events"].append((_EV_PHONEME, ev.sample, sym, 0, 0))
            elif ev.type == _EV_WORD:
                collector["events"].append((_EV_WORD, ev.sample, "", ev.text_position, ev.length))
            elif ev.type in (_EV_END, _EV_SENTENCE, _EV_MSG_TERMINATED):
                collector["events"].append((ev.type, ev.sample, "", 0, 0))
            i += 1
        return 0

    cb = _CALLBACK(callback)
    lib.espeak_SetSynthCallback(cb)
    _STATE.update(lib=lib, sample_rate=int(sr), pid=os.getpid(), callback=cb, collector=collector,
                  voice=None, used=False)
    return lib


def sample_rate() -> int:
    """espeak's native output rate (22050 Hz for the bundled voices)."""
    with _LOCK:
        _lib()
        return _STATE["sample_rate"]


def list_voices() -> list[str]:
    """Voice identifiers (e.g. ``gmw/en-US``) usable as ``voice``; languages work too (``en``, ``de``)."""
    with _LOCK:
        lib = _lib()
        arr = lib.espeak_ListVoices(None)
        out: list[str] = []
        i = 0
        while arr[i]:
            v = arr[i].contents
            out.append((v.identifier or v.name or b"").decode())
            i += 1
        return out


def list_variants() -> list[str]:
    """Voice variants, appended to a voice with ``+`` (``en+m3``) or given as ``variant``."""
    import espeakng_loader

    d = os.path.join(espeakng_loader.get_data_path(), "voices", "!v")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def synthesize(text: str, voice: str = "en", rate: int = 175, pitch: int = 50,
               pitch_range: int = 50, volume: int = 100, variant: str | None = None,
               seed: int = 0) -> Synthesis:
    """Synthesize ``text`` and return audio with per-phoneme and per-word times.

    ``voice`` is a language or voice name, optionally with ``+variant`` (``en+f2``); ``rate`` is
    words per minute (80-450), ``pitch``/``pitch_range`` 0-100, ``volume`` 0-200. espeak's noise
    source (aspiration, fricatives) is re-seeded with ``seed`` per call and the library is reloaded
    between calls, so the output is a pure function of the arguments.
    """
    name = voice if variant is None else f"{voice.split('+')[0]}+{variant}"
    with _LOCK:
        # a library that has synthesized before carries state over: reload it (about 3 ms)
        lib = _lib(fresh=_STATE.get("used", False))
        _STATE["used"] = True
        sr = _STATE["sample_rate"]
        if _STATE["voice"] != name:
            if lib.espeak_SetVoiceByName(name.encode()) != 0:
                raise EspeakError(f"unknown espeak voice {name!r}; see features.espeak.list_voices()"
                                  " and list_variants()")
            _STATE["voice"] = name
        for p, v in ((_P_RATE, rate), (_P_PITCH, pitch), (_P_RANGE, pitch_range), (_P_VOLUME, volume)):
            lib.espeak_SetParameter(p, int(v), 0)
        lib.espeak_ng_SetRandSeed(int(seed))
        col = _STATE["collector"]
        col["chunks"], col["events"] = [], []
        buf = text.encode("utf-8") + b"\0"
        err = lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if err != 0:
            raise EspeakError(f"espeak_Synth failed with code {err} for text {text[:40]!r}")
        chunks, events = col["chunks"], col["events"]
        col["chunks"], col["events"] = [], []
    audio = (np.concatenate(chunks).astype(np.float32) / 32768.0) if chunks else np.zeros(0, np.float32)
    return _timings(audio, sr, events, event_lag(rate))


def event_lag(rate: int) -> float:
    """Seconds by which espeak's PHONEME events trail the acoustic start of their phoneme.

    Measured on this library (median over ~250 landmarks per rate: energy drop into the closure
    of p/t/k after a vowel, energy rise into a vowel after a voiceless consonant): 62 ms at 100
    wpm, 40 ms at 175, 32 ms at 240, 25 ms at 350, the same for German and for every variant
    tried; fitted as 40 ms x (175 / rate)^0.7. It applies between two speech phonemes only:
    onsets after a pause, and the start of a pause, are on time (within 5 ms).
    """
    return 0.040 * (175.0 / min(max(int(rate), 80), 450)) ** 0.7


def _timings(audio: np.ndarray, sr: int, events: list, lag: float = 0.0) -> Synthesis:
    """Turn the event stream into (symbol, start, end) phonemes and (start, end) words.

    A phoneme that follows another (not a pause) starts ``lag`` seconds before its event (see
    :func:`event_lag`; onsets after a pause and the start of a pause are on time), but keeps at
    least half of its predecessor's duration. A phoneme ends where the next one starts. A phoneme
    belongs to the last WORD event before it in the stream (espeak posts WORD, then the word's
    phonemes); a word spans its non-pause phonemes.
    """
    n = len(audio)
    starts: list[tuple[int, str, int]] = []  # (sample, symbol, word index)
    word_text: list[tuple[int, int]] = []
    shift = int(round(lag * sr))
    prev_raw, prev_new, prev_speech = 0, 0, False
    for t, smp, sym, pos, ln in events:
        if t == _EV_WORD:
            word_text.append((pos, ln))
        elif t == _EV_PHONEME:
            speech = not sym.lstrip("',").startswith("_")
            new = smp
            if speech and prev_speech:  # only speech-to-speech transitions are stamped late
                new = max(smp - shift, prev_new + (smp - prev_raw) // 2)
            starts.append((min(max(new, 0), n), sym, len(word_text) - 1))
            prev_raw, prev_new, prev_speech = smp, new, speech
    phonemes, owner = [], []
    for i, (a, sym, w) in enumerate(starts):
        b = starts[i + 1][0] if i + 1 < len(starts) else n
        if b > a:
            phonemes.append((sym, a / sr, b / sr))
            owner.append(w)
    words = []
    for k in range(len(word_text)):
        own = [(a, b) for (sym, a, b), w in zip(phonemes, owner) if w == k and not sym.startswith("_")]
        words.append((own[0][0], own[-1][1]) if own else (0.0, 0.0))
    return Synthesis(audio=audio, sample_rate=sr, phonemes=phonemes, words=words,
                     word_text=word_text, phoneme_word=owner)
