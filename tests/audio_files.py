"""Real audio files of every format the service promises, made in memory with PyAV.

Shared by the decoder's tests and the security fuzzer, which mutates these files.
"""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

# name -> (container format, encoder, rate to encode at, allowed length error in s).
# Lossless formats and mp3/opus (whose headers carry the encoder delay) come out at
# the exact length; AAC in mp4 keeps up to one 1024-sample frame of encoder padding.
FORMATS = {
    "wav_u8": ("wav", "pcm_u8", 44100, 0.002),
    "wav_s16": ("wav", "pcm_s16le", 44100, 0.002),
    "wav_s24": ("wav", "pcm_s24le", 44100, 0.002),
    "wav_s32": ("wav", "pcm_s32le", 44100, 0.002),
    "wav_f32": ("wav", "pcm_f32le", 44100, 0.002),
    "flac": ("flac", "flac", 44100, 0.002),
    "mp3": ("mp3", "libmp3lame", 44100, 0.03),
    "ogg_opus": ("ogg", "libopus", 48000, 0.03),
    "webm_opus": ("webm", "libopus", 48000, 0.03),
    "m4a_aac": ("mp4", "aac", 44100, 0.05),
}


def require_encoder(codec: str) -> None:
    """Skip, naming the codec, when this PyAV wheel was built without the encoder."""
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    try:
        av.Codec(codec, "w")
    except Exception as exc:  # UnknownCodecError when only the decoder is present
        pytest.skip(f"this PyAV build has no {codec} encoder ({exc})")


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode_channels(channels: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    """Encode float samples shaped (channels, n) into an in-memory file."""
    channels = np.ascontiguousarray(np.atleast_2d(channels), dtype=np.float32)
    layout = {1: "mono", 2: "stereo"}[channels.shape[0]]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        ctx = stream.codec_context
        source = av.AudioFrame.from_ndarray(channels, format="fltp", layout=layout)
        source.sample_rate = rate
        source.pts = 0
        # Re-chunk to the encoder's sample format and frame size (aac/opus need both).
        chunker = av.AudioResampler(
            format=ctx.format.name, layout=layout, rate=rate, frame_size=ctx.frame_size or 1024
        )
        for frame in chunker.resample(source) + chunker.resample(None):
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()
