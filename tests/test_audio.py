"""Tests for serve_app.engine.audio: decoding uploads to 16 kHz mono float32.

Every fixture is encoded here with PyAV, so the tests need no files and no network
and exercise the same FFmpeg build the server decodes with.
"""

from __future__ import annotations

import functools
import io
import struct

import av
import numpy as np
import pytest

from serve_app.engine import audio
from serve_app.engine.audio import (
    TARGET_SAMPLE_RATE,
    as_waveform,
    decode_audio,
    duration_seconds,
    to_int16_scale,
)
from serve_app.wire import (
    AudioDecodeError,
    AudioTooLongError,
    EmptyAudioError,
    InvalidRequestError,
    ReverbServeError,
)
from tests.audio_files import FORMATS, encode_channels, require_encoder, tone


@functools.cache
def _tone_file(
    name: str, seconds: float = 2.0, freq: float = 440.0, rate: int | None = None
) -> bytes:
    container, codec, default_rate, _ = FORMATS[name]
    require_encoder(codec)
    rate = rate or default_rate
    return encode_channels(tone(seconds, rate, freq), rate, container, codec)


def _wav_bytes(
    payload: bytes, *, rate: int = 16000, fmt_tag: int = 1, bits: int = 16, extra: bytes = b""
) -> bytes:
    """Hand-built mono RIFF/WAVE, for headers an encoder would never write."""
    block = bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, 1, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra
    body += b"data" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _peak_hz(waveform: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    return float(np.argmax(spectrum)) * TARGET_SAMPLE_RATE / len(waveform)


def _amplitude_at(waveform: np.ndarray, freq: float) -> float:
    """Amplitude of the sinusoid at ``freq`` (Hann-windowed DFT, scaled back)."""
    window = np.hanning(len(waveform))
    spectrum = np.abs(np.fft.rfft(waveform * window))
    k = round(freq * len(waveform) / TARGET_SAMPLE_RATE)
    return float(spectrum[k - 2 : k + 3].max() * 2 / window.sum())


def _assert_waveform(waveform: np.ndarray) -> None:
    assert waveform.dtype == np.float32
    assert waveform.ndim == 1
    assert np.isfinite(waveform).all()
    assert np.abs(waveform).max() <= 1.0


# --- formats ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FORMATS))
def test_decodes_every_supported_format(name: str) -> None:
    slack = FORMATS[name][3]
    waveform = decode_audio(_tone_file(name))
    _assert_waveform(waveform)
    assert abs(duration_seconds(waveform) - 2.0) <= slack
    assert abs(_peak_hz(waveform) - 440.0) < 2.0
    # The right scale for every sample format (u8 is offset, s24/s32 are wider).
    assert _amplitude_at(waveform, 440.0) == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
@pytest.mark.parametrize("name", ["wav_s16", "flac", "mp3"])
def test_resamples_to_16k_keeping_length_and_pitch(name: str, rate: int) -> None:
    waveform = decode_audio(_tone_file(name, seconds=1.5, freq=1000.0, rate=rate))
    _assert_waveform(waveform)
    assert abs(waveform.shape[0] - 1.5 * TARGET_SAMPLE_RATE) <= 0.005 * TARGET_SAMPLE_RATE
    assert abs(_peak_hz(waveform) - 1000.0) < 2.0


def test_stereo_is_averaged_to_mono() -> None:
    left, right = tone(2, 44100, 440.0, 0.6), tone(2, 44100, 1000.0, 0.2)
    waveform = decode_audio(encode_channels(np.stack([left, right]), 44100, "flac", "flac"))
    _assert_waveform(waveform)
    assert _amplitude_at(waveform, 440.0) == pytest.approx(0.3, rel=0.03)
    assert _amplitude_at(waveform, 1000.0) == pytest.approx(0.1, rel=0.03)


def test_loud_identical_channels_do_not_clip() -> None:
    # FFmpeg's default downmix (0.707 per channel) would turn 0.9 into 1.27 and clip.
    mono = tone(1, 16000, 440.0, 0.9)
    stereo = encode_channels(np.stack([mono, mono]), 16000, "wav", "pcm_f32le")
    np.testing.assert_allclose(decode_audio(stereo), mono, atol=1e-6)


def test_format_change_mid_stream_is_followed() -> None:
    # Two mp3s back to back: 44.1 kHz mono, then 22.05 kHz stereo. PyAV's resampler
    # rejects a frame unlike its first, so decoding must rebuild it.
    require_encoder("libmp3lame")
    first = encode_channels(tone(1, 44100), 44100, "mp3", "libmp3lame")
    second = encode_channels(np.stack([tone(1, 22050, 880.0)] * 2), 22050, "mp3", "libmp3lame")
    waveform = decode_audio(first + second)
    _assert_waveform(waveform)
    assert duration_seconds(waveform) == pytest.approx(2.0, abs=0.15)
    half = waveform.shape[0] // 2
    assert abs(_peak_hz(waveform[: half - 1600]) - 440.0) < 3.0
    assert abs(_peak_hz(waveform[half + 1600 :]) - 880.0) < 3.0


def test_float_wav_overshoot_is_clipped() -> None:
    samples = np.array([0.5, 1.5, -2.0, 0.25] * 400, dtype="<f4")
    waveform = decode_audio(_wav_bytes(samples.tobytes(), fmt_tag=3, bits=32))
    assert waveform.max() == 1.0
    assert waveform.min() == -1.0


def test_latin1_metadata_does_not_break_decoding() -> None:
    # PyAV < 19 decodes tags strictly as UTF-8 unless told otherwise.
    info = b"INFO" + b"INAM" + struct.pack("<I", 6) + b"caf\xe9\xff\x00"
    tag = b"LIST" + struct.pack("<I", len(info)) + info
    pcm = (tone(1, 16000) * 32767).astype("<i2").tobytes()
    assert decode_audio(_wav_bytes(pcm, extra=tag)).shape == (16000,)


# --- bad input ----------------------------------------------------------------


def test_empty_bytes_is_empty_audio() -> None:
    with pytest.raises(EmptyAudioError, match="empty") as info:
        decode_audio(b"")
    assert info.value.status_code == 400
    assert info.value.param == "file"


def test_wav_without_samples_is_empty_audio() -> None:
    with pytest.raises(EmptyAudioError):
        decode_audio(_wav_bytes(b""))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("size", [1, 64, 4096, 100_000])
def test_random_bytes_are_undecodable(seed: int, size: int) -> None:
    data = np.random.default_rng(seed).bytes(size)
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(data)
    assert info.value.status_code == 415


def test_file_without_audio_stream() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("rawvideo", rate=5)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        decode_audio(buf.getvalue())


@pytest.mark.parametrize(
    ("name", "cut"),
    [
        ("wav_s16", 30),  # inside the RIFF/fmt header
        ("mp3", 2),  # half of the first frame header
        ("flac", 20),  # inside STREAMINFO
        ("webm_opus", 50),  # inside the EBML header
    ],
)
def test_truncated_inside_the_header_is_undecodable(name: str, cut: int) -> None:
    with pytest.raises(AudioDecodeError):
        decode_audio(_tone_file(name)[:cut])


def test_m4a_cut_before_its_index_is_undecodable() -> None:
    # Without "faststart" the moov index sits after the audio; half a file has none.
    data = _tone_file("m4a_aac")
    with pytest.raises(AudioDecodeError):
        decode_audio(data[: len(data) // 2])


@pytest.mark.parametrize("name", ["wav_s16", "wav_s24", "flac", "mp3", "ogg_opus", "webm_opus"])
def test_truncated_file_decodes_what_is_there(name: str) -> None:
    # Documented choice: a cut-off upload is transcribed as far as it goes. Ogg
    # pages here hold ~1 s, so the cut loses up to that much; FLAC's last packet is
    # incomplete and skipped.
    data = _tone_file(name, seconds=4.0)
    waveform = decode_audio(data[: len(data) // 2])
    _assert_waveform(waveform)
    assert 0.9 <= duration_seconds(waveform) <= 2.2
    assert abs(_peak_hz(waveform) - 440.0) < 3.0


def _remux_with_garbage(data: bytes, garbage: set[int]) -> bytes:
    """Copy a file's packets into Matroska, replacing the packets numbered in ``garbage``."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with av.open(io.BytesIO(data)) as src, av.open(buf, "w", format="matroska") as out:
        in_stream = src.streams.audio[0]
        out_stream = out.add_stream_from_template(in_stream)
        for index, packet in enumerate(p for p in src.demux(in_stream) if p.size):
            if index in garbage:
                bad = av.Packet(rng.bytes(packet.size))
                bad.pts, bad.dts, bad.duration = packet.pts, packet.dts, packet.duration
                bad.time_base = packet.time_base
                packet = bad
            packet.stream = out_stream
            out.mux(packet)
    return buf.getvalue()


def test_one_bad_packet_is_skipped() -> None:
    data = _remux_with_garbage(_tone_file("flac", seconds=3.0), garbage={10})
    waveform = decode_audio(data)
    # One FLAC packet (4608 samples at 44.1 kHz, ~0.1 s) is missing, nothing else.
    assert 2.85 <= duration_seconds(waveform) < 3.0


def test_mostly_bad_packets_are_corrupt() -> None:
    data = _remux_with_garbage(_tone_file("flac", seconds=3.0), garbage=set(range(1, 100, 2)))
    with pytest.raises(AudioDecodeError, match="corrupt"):
        decode_audio(data)


@pytest.mark.parametrize("rate", [1, 709_000_000])
def test_absurd_sample_rate_is_refused(rate: int) -> None:
    # Without the check, 1 Hz would resample to ~65 M samples and 709 MHz would take
    # FFmpeg seconds to set up.
    with pytest.raises(AudioDecodeError, match="sample rate"):
        decode_audio(_wav_bytes(b"\x00\x01" * 4096, rate=rate))


def test_nan_in_float_wav_is_undecodable() -> None:
    samples = np.array([0.1, np.nan, 0.2, np.inf] * 400, dtype="<f4")
    with pytest.raises(AudioDecodeError, match="NaN"):
        decode_audio(_wav_bytes(samples.tobytes(), fmt_tag=3, bits=32))


@pytest.mark.parametrize("name", ["wav_s16", "flac", "mp3", "webm_opus"])
def test_damaged_files_only_raise_typed_errors(name: str) -> None:
    """Seeded mutations of valid files: a waveform or a ReverbServeError, nothing else."""
    data = _tone_file(name, seconds=1.0)
    rng = np.random.default_rng(1234)
    for i in range(40):
        damaged = bytearray(data)
        if i % 3 == 0:  # scattered byte changes, mostly in the header
            for pos in rng.integers(0, min(len(data), 512), size=int(rng.integers(1, 16))):
                damaged[pos] = int(rng.integers(0, 256))
        elif i % 3 == 1:  # a run of garbage anywhere
            start = int(rng.integers(0, len(data)))
            end = min(len(data), start + int(rng.integers(1, 2000)))
            damaged[start:end] = rng.bytes(end - start)
        else:  # cut anywhere
            damaged = damaged[: int(rng.integers(1, len(data)))]
        try:
            waveform = decode_audio(bytes(damaged), max_seconds=30)
        except ReverbServeError:
            continue
        _assert_waveform(waveform)


# --- duration limit -------------------------------------------------------------


def test_over_long_audio_is_rejected() -> None:
    # 3 s against 2 s is within the pre-check's margin: the decode-time count catches it.
    with pytest.raises(AudioTooLongError, match="longer than the 2 s limit") as info:
        decode_audio(_tone_file("wav_s16", seconds=3.0), max_seconds=2)
    assert info.value.status_code == 413
    assert info.value.param == "file"


@pytest.mark.parametrize("name", ["flac", "mp3", "webm_opus", "m4a_aac"])
def test_over_long_compressed_audio_is_rejected(name: str) -> None:
    with pytest.raises(AudioTooLongError):
        decode_audio(_tone_file(name, seconds=3.0), max_seconds=2.5)


def test_limit_is_inclusive() -> None:
    data = encode_channels(tone(3, 16000), 16000, "wav", "pcm_s16le")
    assert decode_audio(data, max_seconds=3).shape == (48000,)
    with pytest.raises(AudioTooLongError):
        decode_audio(data, max_seconds=2.999)


def test_declared_duration_rejects_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_decode(*args: object) -> None:
        raise AssertionError("decoded a file whose header already exceeds the limit")

    monkeypatch.setattr(audio, "_decoded_frames", must_not_decode)
    with pytest.raises(AudioTooLongError, match="1 s limit"):
        decode_audio(_tone_file("wav_s16", seconds=60.0, rate=16000), max_seconds=1)


def test_limit_stops_decoding_early(monkeypatch: pytest.MonkeyPatch) -> None:
    # Hide the declared duration (as for a stream without one) and count what gets
    # decoded: the 60 s file must be abandoned just past the 1 s limit.
    decoded_seconds: list[float] = []
    real_decoded_frames = audio._decoded_frames

    def counting(container, stream):  # type: ignore[no-untyped-def]
        for frame in real_decoded_frames(container, stream):
            decoded_seconds.append(frame.samples / frame.sample_rate)
            yield frame

    monkeypatch.setattr(audio, "_declared_duration", lambda container: None)
    monkeypatch.setattr(audio, "_decoded_frames", counting)
    with pytest.raises(AudioTooLongError, match="1 s limit"):
        decode_audio(_tone_file("wav_s16", seconds=60.0, rate=16000), max_seconds=1)
    assert 1.0 <= sum(decoded_seconds) < 1.5


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_nonsensical_limit_is_a_programming_error(bad: float) -> None:
    with pytest.raises(ValueError, match="max_seconds"):
        decode_audio(_tone_file("wav_s16"), max_seconds=bad)
    with pytest.raises(ValueError, match="max_seconds"):
        as_waveform(np.zeros(10, np.float32), max_seconds=bad)


# --- as_waveform --------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_as_waveform_decodes_bytes_like(wrap: type) -> None:
    data = _tone_file("flac")
    np.testing.assert_array_equal(as_waveform(wrap(data)), decode_audio(data))


def test_as_waveform_copies_read_only_array() -> None:
    source = tone(1, 16000).astype(np.float64)
    source.flags.writeable = False  # what Ray's object store hands over
    waveform = as_waveform(source)
    assert waveform.dtype == np.float32
    assert waveform.flags.writeable
    assert not np.shares_memory(waveform, source)
    np.testing.assert_allclose(waveform, source, atol=1e-7)
    waveform[:] = 0  # the caller's array is untouched
    assert source.any()


def test_as_waveform_always_copies_float32() -> None:
    source = tone(1, 16000)
    assert not np.shares_memory(as_waveform(source), source)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((2, 16000), np.float32), "1-D"),
        (np.zeros((16000, 1), np.float32), "1-D"),
        (np.zeros(16000, np.int16), "float"),
        (np.array([0.1, np.nan, 0.2], np.float32), "NaN"),
        (np.array([0.1, np.inf], np.float64), "NaN or infinite"),
        (np.array([0.0, 30000.0, -12000.0], np.float32), "32768"),
    ],
)
def test_as_waveform_rejects_bad_arrays(array: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match) as info:
        as_waveform(array)
    assert info.value.status_code == 400
    assert type(info.value) is InvalidRequestError


def test_as_waveform_rejects_other_types() -> None:
    with pytest.raises(InvalidRequestError, match="list"):
        as_waveform([0.0, 0.1])  # type: ignore[arg-type]


def test_as_waveform_empty_array() -> None:
    with pytest.raises(EmptyAudioError):
        as_waveform(np.zeros(0, np.float32))


def test_as_waveform_enforces_limit_on_arrays() -> None:
    assert as_waveform(np.zeros(32000, np.float32), max_seconds=2).shape == (32000,)
    with pytest.raises(AudioTooLongError, match="2 s limit"):
        as_waveform(np.zeros(32001, np.float32), max_seconds=2)


def test_as_waveform_clips_small_overshoot() -> None:
    waveform = as_waveform(np.array([0.5, 1.2, -1.3], np.float32))
    np.testing.assert_array_equal(waveform, np.array([0.5, 1.0, -1.0], np.float32))


# --- helpers ------------------------------------------------------------------------


def test_to_int16_scale() -> None:
    waveform = np.array([0.0, 0.5, -1.0, 1.0], np.float32)
    scaled = to_int16_scale(waveform)
    assert scaled.dtype == np.float32
    np.testing.assert_array_equal(scaled, [0.0, 16384.0, -32768.0, 32768.0])
    np.testing.assert_array_equal(waveform, [0.0, 0.5, -1.0, 1.0])  # input untouched


def test_duration_seconds() -> None:
    assert duration_seconds(np.zeros(24000, np.float32)) == 1.5
    assert duration_seconds(np.zeros(0, np.float32)) == 0.0


def test_encode_wav_round_trips_exactly() -> None:
    from serve_app.engine.audio import encode_wav

    rng = np.random.default_rng(7)
    samples = np.round(rng.uniform(-0.9, 0.9, 16000) * 32768) / 32768
    decoded = decode_audio(encode_wav(samples.astype(np.float32)))
    np.testing.assert_array_equal(decoded, samples.astype(np.float32))


@pytest.mark.parametrize("declared_s", [None, 0.1, 2.0, 2.1, 600.0])
def test_collect_writes_one_buffer_whatever_the_header_claims(declared_s):
    """Headers under- or overstate the length: the samples come out the same, and a
    far-overstated buffer is not kept alive by the returned view."""
    from serve_app.engine.audio import _collect

    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal(4000).astype(np.float32) for _ in range(8)]  # 2 s
    out = _collect(iter(chunks), 60.0, declared_s)
    assert np.array_equal(out, np.concatenate(chunks))
    base = out.base if out.base is not None else out
    assert base.shape[0] <= 2 * out.shape[0] + TARGET_SAMPLE_RATE


def test_collect_stops_at_the_limit_even_when_the_header_lies():
    from serve_app.engine.audio import _collect

    chunks = (np.zeros(16000, np.float32) for _ in range(100))
    with pytest.raises(AudioTooLongError):
        _collect(chunks, 10.0, 1.0)
