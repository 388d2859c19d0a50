"""Turn whatever audio a caller sends into the waveform the model consumes.

Reverb wants 16 kHz mono samples. Callers send compressed files in the formats
browsers and phones produce, so everything goes through PyAV, which bundles its
own FFmpeg: the server needs no system ``ffmpeg`` binary and decodes straight
from memory, never through a temporary file.

This module is the first code that touches untrusted bytes, so it promises one
thing: bad input ends as one of the typed errors in
:mod:`serve_app.wire` (a 4xx for the HTTP layer), never as a stray
PyAV exception that would surface as a 500, and never as an unbounded decode.
The duration limit is enforced while decoding, so a 10-hour file costs no more
than decoding the first ``max_seconds`` of it.

Decisions a caller can observe:

* Empty input (``b""``) raises :class:`EmptyAudioError` (400), like a valid
  file with no samples: the request is well formed but has nothing to
  transcribe, and "unsupported format" (415) would mislead.
* A truncated file is decoded as far as it goes, as the ``ffmpeg`` CLI does:
  an upload cut short (a recorder stopped mid-write, a client that lost the
  tail) still holds speech worth transcribing. A cut that leaves nothing
  decodable (inside the header, or an m4a whose index sits at the end) raises
  :class:`AudioDecodeError`; one that leaves a header but no samples raises
  :class:`EmptyAudioError`.
* Packets the decoder rejects are skipped, again like the CLI, because a cut
  usually lands inside the last packet (FLAC always fails there). A file where
  more than a tenth of the packets fail, or every packet fails, is corrupt
  rather than cut short and raises :class:`AudioDecodeError`.
* Channels are averaged with equal weight. FFmpeg's own mono downmix adds
  stereo channels at 0.707 each, so loud stereo would exceed full scale.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import av
import numpy as np

from serve_app.engine.containers import OPEN_OPTIONS
from serve_app.engine.sample_buffer import Reserve, SampleBuffer
from serve_app.wire import (
    AudioDecodeError,
    AudioTooLongError,
    EmptyAudioError,
    InvalidRequestError,
)

TARGET_SAMPLE_RATE = 16000
"""Sample rate Reverb's feature extraction was trained on; every waveform here uses it."""

INT16_SCALE = 32768.0
"""Factor between float samples in [-1, 1] and the int16 range Reverb's fbank expects."""

_PARAM = "file"  # The OpenAI transcription API calls the audio upload ``file``.
_SUPPORTED_FORMATS = "wav, flac, mp3, ogg/opus, webm/opus or m4a/aac"

# A container's declared duration is an estimate (an mp3 without a Xing header is
# guessed from file size and bitrate), so the pre-check only rejects files that are
# clearly too long; the sample count while decoding is the real limit.
_PRECHECK_FACTOR = 1.1
_PRECHECK_MARGIN_S = 1.0

# Share of packets the decoder may reject before the file counts as corrupt rather
# than cut short or glitched; see _decoded_frames.
_MAX_BAD_PACKET_SHARE = 0.1

# Output frame size. Codec frames are 20-26 ms; regrouping them into quarter seconds
# halves the per-frame Python and numpy overhead (mp3/opus decode 2x faster) while
# the duration limit still fires within 0.25 s of audio.
_CHUNK_SAMPLES = TARGET_SAMPLE_RATE // 4

# Sample rates outside this range come from corrupt headers, not recordings
# (768 kHz is the highest rate audio interfaces offer); see _check_sample_rate.
_MIN_SAMPLE_RATE = 1000
_MAX_SAMPLE_RATE = 768_000

# Float arrays louder than this are not [-1, 1] audio with some overshoot but
# samples in int16 units, which the model would hear 32768 times too loud.
_MAX_ARRAY_PEAK = 2.0

# What PyAV raises for input it cannot handle: FFmpegError for every AVERROR code
# (InvalidDataError, EOFError, DecoderNotFoundError, PatchWelcomeError, ...) and
# ValueError for PyAV's own checks, UnicodeDecodeError from metadata included.
_AV_FAILURES: tuple[type[Exception], ...] = (av.error.FFmpegError, ValueError)

# PyAV < 19 decodes container metadata eagerly and strictly as UTF-8, so one Latin-1
# tag (common in wav INFO chunks) would make a valid file fail to open. PyAV 19
# removed the argument and always decodes with ``surrogateescape``.
_METADATA_OPTIONS: dict[str, str] = (
    {"metadata_errors": "ignore"} if int(av.__version__.split(".")[0]) < 19 else {}
)


def decode_audio(
    data: bytes, *, max_seconds: float | None = None, reserve: Reserve | None = None
) -> np.ndarray:
    """Decode an audio file held in memory to 16 kHz mono float32 samples in [-1, 1].

    Args:
        data: The complete file. Anything FFmpeg reads works; the service
            promises wav (8/16/24/32-bit int, 32-bit float), flac, mp3,
            ogg/opus, webm/opus and m4a/aac.
        max_seconds: Reject audio longer than this. Checked against the
            container's declared duration before decoding, then against the
            decoded sample count while decoding, so a long file is never fully
            decoded into memory. A server should always pass it.
        reserve: Offered every allocation of decoded samples before it happens (see
            :mod:`sample_buffer`); whatever it raises, e.g. a 503 when the server's
            decoded-audio budget is spent, ends the decode.

    Raises:
        EmptyAudioError: ``data`` is empty or decodes to zero samples.
        AudioDecodeError: ``data`` is not decodable audio (random bytes, cut
            inside the header, no audio stream, corrupt packets, an absurd
            sample rate, NaN samples).
        AudioTooLongError: the audio is longer than ``max_seconds``.
        ValueError: ``max_seconds`` is not a positive number (a server bug).
    """
    _check_max_seconds(max_seconds)
    if len(data) == 0:
        raise EmptyAudioError("The uploaded audio file is empty (0 bytes).", param=_PARAM)
    try:
        with av.open(
            io.BytesIO(data), mode="r", options=OPEN_OPTIONS, **_METADATA_OPTIONS
        ) as container:
            stream = _audio_stream(container)
            if max_seconds is not None:
                _precheck_duration(container, max_seconds)
            declared = _declared_duration(container)
            waveform = _collect(_mono_chunks(container, stream), max_seconds, declared, reserve)
    except _AV_FAILURES as exc:
        raise AudioDecodeError(
            f"The uploaded file could not be decoded as audio; send {_SUPPORTED_FORMATS}.",
            param=_PARAM,
        ) from exc
    if waveform.shape[0] == 0:
        raise EmptyAudioError("The uploaded audio contains no samples.", param=_PARAM)
    # Float sources (f32 wav, decoded aac/opus) can overshoot full scale; the int16
    # audio the model was trained on cannot.
    np.clip(waveform, -1.0, 1.0, out=waveform)
    return waveform


def as_waveform(
    audio: bytes | bytearray | memoryview | np.ndarray,
    *,
    max_seconds: float | None = None,
    reserve: Reserve | None = None,
) -> np.ndarray:
    """Return a private, writable 16 kHz mono float32 waveform for either kind of input.

    Bytes are an encoded file and go through :func:`decode_audio`. A numpy
    array is taken to be 16 kHz mono float samples already (the Python API and
    the Serve layer pass arrays); it is validated and copied, because arrays
    that arrive through Ray's object store are read-only and later stages may
    work in place.

    Raises:
        InvalidRequestError: an array that is not 1-D, not float, not finite,
            or plainly in int16 units rather than [-1, 1]; or an unsupported type.
        EmptyAudioError, AudioTooLongError: for bytes and arrays alike.
        AudioDecodeError: bytes that are not decodable audio.
    """
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return decode_audio(bytes(audio), max_seconds=max_seconds, reserve=reserve)
    if isinstance(audio, np.ndarray):
        return _validated_array(audio, max_seconds)
    raise InvalidRequestError(
        f"Audio must be an encoded file (bytes) or a numpy array, not {type(audio).__name__}.",
        param=_PARAM,
    )


def to_int16_scale(waveform: np.ndarray) -> np.ndarray:
    """Scale [-1, 1] samples to int16 magnitudes (x 32768), kept as float32.

    Reverb's feature extraction follows WeNet, which loads audio as int16 and
    computes Kaldi fbank on the raw values (``waveform * (1 << 15)``). The
    model was trained on features of that scale; unit-scale samples would
    shift every log-mel bin and hurt accuracy. Returns a new array.
    """
    return np.asarray(waveform, dtype=np.float32) * np.float32(INT16_SCALE)


def duration_seconds(waveform: np.ndarray) -> float:
    """Length of a 16 kHz waveform in seconds (what responses report as ``duration``)."""
    return float(waveform.shape[0]) / TARGET_SAMPLE_RATE


# --- duration limit -----------------------------------------------------------


def _check_max_seconds(max_seconds: float | None) -> None:
    """Fail loudly on a nonsensical limit: it is a server setting, not caller input."""
    if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds > 0):
        raise ValueError(f"max_seconds must be a positive number, got {max_seconds!r}")


def _max_samples(max_seconds: float) -> int:
    """The limit in output samples, the unit decoding counts in."""
    return round(max_seconds * TARGET_SAMPLE_RATE)


def _too_long(max_seconds: float) -> AudioTooLongError:
    return AudioTooLongError(f"Audio is longer than the {max_seconds:g} s limit.", param=_PARAM)


# --- decoding -----------------------------------------------------------------


def _audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream:
    """Pick the stream to transcribe; a file may also carry cover art or video."""
    stream = container.streams.best("audio")
    if stream is None:
        raise AudioDecodeError("The uploaded file contains no audio stream.", param=_PARAM)
    return stream


def _declared_duration(container: av.container.InputContainer) -> float | None:
    """Duration the container header claims, in seconds, or None if it states none."""
    if container.duration is None or container.duration <= 0:
        return None
    return container.duration / av.time_base


def _precheck_duration(container: av.container.InputContainer, max_seconds: float) -> None:
    """Reject before decoding anything when the header says the file is far too long."""
    declared = _declared_duration(container)
    if declared is not None and declared > max_seconds * _PRECHECK_FACTOR + _PRECHECK_MARGIN_S:
        raise _too_long(max_seconds)


def _decoded_frames(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream
) -> Iterator[av.AudioFrame]:
    """Decode one stream lazily, so the duration limit can stop it early.

    Skips packets the decoder rejects and raises once the file looks corrupt
    rather than cut short (see the module docstring).
    """
    packets = bad = frames = 0
    last_error: av.error.FFmpegError | None = None
    for packet in container.demux(stream):
        if packet.size:  # demux ends with an empty packet that only flushes the decoder
            packets += 1
        try:
            decoded = stream.decode(packet)
        except av.error.FFmpegError as exc:
            bad += 1
            last_error = exc
            continue
        frames += len(decoded)
        yield from decoded
    if bad and (frames == 0 or (bad > 1 and bad > packets * _MAX_BAD_PACKET_SHARE)):
        raise AudioDecodeError(
            f"The uploaded audio is corrupt: {bad} of {packets} packets could not be decoded.",
            param=_PARAM,
        ) from last_error


def _mono_chunks(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream
) -> Iterator[np.ndarray]:
    """Yield 16 kHz mono float32 chunks as frames come out of the decoder.

    The resampler is rebuilt whenever the input format changes mid-stream
    (concatenated mp3s switch rate or channel count): PyAV's resampler is
    fixed to the first frame it sees and rejects any other.
    """
    resampler: av.AudioResampler | None = None
    setup: tuple[str, str, int, int] | None = None
    for frame in _decoded_frames(container, stream):
        if frame.samples == 0:
            continue
        frame_setup = (
            frame.format.name,
            frame.layout.name,
            len(frame.layout.channels),
            frame.sample_rate,
        )
        if frame_setup != setup:
            _check_sample_rate(frame.sample_rate)
            if resampler is not None:
                yield from _to_mono(resampler.resample(None))
            # Planar float keeps the channels apart for _to_mono to average; the
            # layout is left as it comes (see the module docstring).
            resampler = av.AudioResampler(
                format="fltp", rate=TARGET_SAMPLE_RATE, frame_size=_CHUNK_SAMPLES
            )
            setup = frame_setup
        yield from _to_mono(resampler.resample(frame))
    if resampler is not None:
        # The resampler holds back a filter's length of samples; flushing returns them.
        yield from _to_mono(resampler.resample(None))


def _check_sample_rate(rate: int) -> None:
    """Refuse rates no recording has; resampling from them costs unbounded time or memory.

    A corrupt header can claim 700 MHz (FFmpeg then spends seconds building the
    filter) or 1 Hz (one 4096-sample frame becomes 65 million output samples
    before the duration limit gets to look).
    """
    if not _MIN_SAMPLE_RATE <= rate <= _MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            f"The uploaded audio has an unsupported sample rate of {rate} Hz.", param=_PARAM
        )


def _to_mono(frames: list[av.AudioFrame]) -> Iterator[np.ndarray]:
    """Average the channels of planar float frames into 1-D float32 chunks."""
    for frame in frames:
        planes = frame.to_ndarray()  # (channels, samples), as the format is planar
        if planes.shape[-1] == 0:
            continue
        # Only float PCM can carry these, and the model would turn them into NaN features.
        if not np.isfinite(planes).all():
            raise AudioDecodeError(
                "The uploaded audio contains NaN or infinite samples.", param=_PARAM
            )
        yield planes.mean(axis=0, dtype=np.float32)


def _collect(
    chunks: Iterator[np.ndarray],
    max_seconds: float | None,
    declared_s: float | None,
    reserve: Reserve | None = None,
) -> np.ndarray:
    """Write chunks into one buffer sized from the header's duration, raising as soon
    as the running total passes the limit (see :mod:`sample_buffer`)."""
    buffer = SampleBuffer(
        expected=round(declared_s * TARGET_SAMPLE_RATE) if declared_s else None,
        limit=_max_samples(max_seconds) if max_seconds is not None else None,
        too_long=lambda: _too_long(max_seconds),
        reserve=reserve,
        margin=_CHUNK_SAMPLES,
    )
    for chunk in chunks:
        buffer.append(chunk)
    return buffer.samples()


# --- array input --------------------------------------------------------------


def _validated_array(audio: np.ndarray, max_seconds: float | None) -> np.ndarray:
    """Check an array is plausible 16 kHz mono float audio and return a writable copy."""
    _check_max_seconds(max_seconds)
    if audio.ndim != 1:
        raise InvalidRequestError(
            f"Audio arrays must be 1-D mono samples, not shape {audio.shape}.", param=_PARAM
        )
    if not np.issubdtype(audio.dtype, np.floating):
        raise InvalidRequestError(
            f"Audio arrays must hold float samples in [-1, 1], not {audio.dtype}.",
            param=_PARAM,
        )
    if audio.shape[0] == 0:
        raise EmptyAudioError("The audio array contains no samples.", param=_PARAM)
    if max_seconds is not None and audio.shape[0] > _max_samples(max_seconds):
        raise _too_long(max_seconds)
    waveform = np.array(audio, dtype=np.float32, order="C")  # always a fresh copy
    if not np.isfinite(waveform).all():
        raise InvalidRequestError(
            "Audio arrays must not contain NaN or infinite samples.", param=_PARAM
        )
    peak = float(np.abs(waveform).max())
    if peak > _MAX_ARRAY_PEAK:
        raise InvalidRequestError(
            f"Audio samples must lie in [-1, 1] but peak at {peak:g}; divide int16 audio by 32768.",
            param=_PARAM,
        )
    np.clip(waveform, -1.0, 1.0, out=waveform)
    return waveform


def encode_wav(waveform: np.ndarray, sample_rate: int = TARGET_SAMPLE_RATE) -> bytes:
    """16-bit mono WAV bytes of float samples in [-1, 1].

    Scales by 32768 so that ``pcm / 32768`` (what ``decode_audio`` returns) round-trips
    the samples exactly; tests, examples and benchmarks all make uploads with it.
    """
    import wave

    pcm = np.clip(np.round(waveform * INT16_SCALE), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()
