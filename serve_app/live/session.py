"""One realtime transcription session: audio in, OpenAI's events out.

The session keeps the audio of the turn in progress at 16 kHz, feeds a
:class:`LiveStream` for partials, and turns what the batched step reports into
events: ``speech_started`` / ``speech_stopped`` from the endpointer, append-only
``delta`` text as words settle, and at each endpoint (or the client's commit)
``committed`` and then, once the batch path has transcribed the turn's audio,
``completed`` (or ``failed``). Item ids chain through ``previous_item_id``; every item
gets exactly one ``completed`` or ``failed``.

A word is sent as a delta once another word follows it in the best hypothesis, or once
``WORD_SETTLE_MS`` of blank frames follow its spike (the last word of a partial may
still be being heard: a word's pieces spike on neighbouring frames), and the rest of
the partial when the turn ends, so a turn's deltas join into its whole partial
transcript. Waiting for the next word instead held a turn's first delta until the
second word's chunk (p95 1.1-1.2 s after the onset, bench/RESULTS.md section 8). The
final may still revise the text (full context, rescoring); deltas never do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from serve_app.engine.options import DecodeOptions

if TYPE_CHECKING:  # the model module loads wenet; a session needs only its interface
    from serve_app.engine.model import ReverbModel
from serve_app.live.decoder import LiveStream, StepOutput
from serve_app.live.endpointing import FRAME_MS, SpeechStarted, SpeechStopped
from serve_app.live.protocol import (
    ProtocolError,
    SessionSettings,
    error_event,
    new_id,
    pcm16_samples,
    server_event,
)

SAMPLE_RATE = 16_000
MAX_BUFFER_S = 300  # uncommitted audio a session holds at most (19 MB at 16 kHz float32)
MAX_BUFFER_SAMPLES = MAX_BUFFER_S * SAMPLE_RATE
IDLE_KEEP_S = 20  # between turns with VAD on: older audio cannot start a turn any more
MAX_BACKLOG_S = IDLE_KEEP_S  # with VAD on, how far audio may run ahead of the decoder
WORD_SETTLE_MS = 160  # blank after the last spike that makes a partial's last word final

FinalTranscriber = Callable[[np.ndarray, DecodeOptions], Awaitable[str]]
"""The batch path: a turn's 16 kHz audio and options -> its transcript text."""


class Resampler:
    """Appended audio at the session's rate to 16 kHz, statefully (libswresample via
    PyAV), so pieces of any size resample as one signal."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._resampler = (
            av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            if rate != SAMPLE_RATE
            else None
        )

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if self._resampler is None or not samples.size:
            return samples
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = self.rate
        out = [f.to_ndarray()[0] for f in self._resampler.resample(frame)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)


@dataclass
class Item:
    """One turn: its id, where its audio starts, the delta text sent so far."""

    id: str
    start_sample: int
    sent_words: list[str] = field(default_factory=list)
    earlier_words: list[str] = field(default_factory=list)  # from finished segments


class LiveSession:
    """See the module docstring. Events go to ``outbox`` in the order they happen."""

    def __init__(
        self,
        stream_factory: Callable[[SessionSettings], LiveStream],
        detokenize: Callable[[tuple[int, ...]], str],
        finals: FinalTranscriber,
        *,
        max_segment_s: float = 20.0,
    ) -> None:
        self.id = new_id("sess")
        self.settings = SessionSettings()
        self._stream_factory = stream_factory
        self._detokenize = detokenize
        self._finals = finals
        self._max_segment_frames = int(max_segment_s * 1000 / FRAME_MS)
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending_finals: set[asyncio.Task[None]] = set()
        self._previous_item: str | None = None
        self._restart()
        self._emit(server_event("session.created", session=self.described()))

    @classmethod
    def on_model(
        cls, model: ReverbModel, finals: FinalTranscriber, *, beam_size: int
    ) -> LiveSession:
        """A session whose partials come from ``model``: its streams decode on the
        model's device with the session's verbatimicity and turn detection, and its
        tokens are read by the model's tokenizer (what a realtime replica serves, and
        what the benchmarks replay without Ray)."""

        def new_stream(settings: SessionSettings) -> LiveStream:
            return LiveStream(
                settings.transcription.verbatimicity,
                beam_size=beam_size,
                device=model.device,
                rules=settings.endpoint_rules,
            )

        def detokenize(tokens: tuple[int, ...]) -> str:
            return model.tokenizer.detokenize(list(tokens))[0] if tokens else ""

        return cls(new_stream, detokenize, finals)

    # ------------------------------------------------------------------ state

    def _restart(self) -> None:
        """A fresh buffer and stream (session start, update, clear)."""
        self._resample = Resampler(self.settings.rate)
        self._audio: list[np.ndarray] = []
        self._buffer_start = 0  # sample index of _audio[0]
        self._received = 0  # 16 kHz samples received in all
        self.item: Item | None = None
        self._fresh_stream()

    def described(self) -> dict[str, Any]:
        return {"id": self.id, **self.settings.described()}

    def _emit(self, event: dict[str, Any]) -> None:
        self.outbox.put_nowait(event)

    @property
    def options(self) -> DecodeOptions:
        tr = self.settings.transcription
        return DecodeOptions(decoding_mode=tr.decoding_mode, verbatimicity=tr.verbatimicity)

    # ------------------------------------------------------------------ client events

    def handle(self, event: dict[str, Any]) -> None:
        """One parsed client event; a refusal becomes an ``error`` event."""
        try:
            kind = event["type"]
            if kind in ("session.update", "transcription_session.update"):
                self.settings = self.settings.updated_by(event)
                self.abandon_turn("The session was updated during the turn.", "session_updated")
                self._restart()
                updated = kind.replace(".update", ".updated")
                self._emit(server_event(updated, session=self.described()))
            elif kind == "input_audio_buffer.append":
                self._append(pcm16_samples(event, self.settings.rate))
            elif kind == "input_audio_buffer.commit":
                self._commit(client=True)
            elif kind == "input_audio_buffer.clear":
                self.abandon_turn(
                    "The input audio buffer was cleared.", "input_audio_buffer_cleared"
                )
                self._restart()
                self._emit(server_event("input_audio_buffer.cleared"))
        except ProtocolError as exc:
            self._emit(error_event(exc, event.get("event_id")))

    def _append(self, samples: np.ndarray) -> None:
        audio = self._resample(samples)
        if self._received - self._buffer_start + audio.size > MAX_BUFFER_SAMPLES:
            raise ProtocolError(
                f"The input audio buffer holds {MAX_BUFFER_S} s of uncommitted audio, the "
                "most a session keeps: commit or clear it (or send at real time, so the "
                "server's VAD keeps up).",
                code="input_audio_buffer_full",
            )
        vad = self.settings.turn_detection is not None
        if vad and self.stream.backlog_s + audio.size / SAMPLE_RATE > MAX_BACKLOG_S:
            # The server VAD judges audio only once decoded; ahead of it, audio would be
            # forgotten unjudged (and held without bound).
            raise ProtocolError(
                f"Audio is arriving faster than it is decoded: the server VAD runs at most "
                f"{MAX_BACKLOG_S} s behind what was sent. Send at real time, or turn "
                "turn_detection off and commit.",
                code="input_audio_buffer_full",
            )
        if self.item is None and vad:
            self._forget_silence()
        self._audio.append(audio)
        self._received += audio.size
        self.stream.push(audio)
        if self.settings.turn_detection is None and self.item is None and audio.size:
            self.item = Item(new_id("item"), self._buffer_start)

    def _commit(self, *, client: bool, end_sample: int | None = None) -> None:
        """End the turn: ``committed``, then its final from the batch path."""
        end = self._received if end_sample is None else end_sample
        item = self.item or Item(new_id("item"), self._buffer_start)
        audio = self._take_audio(item.start_sample, end)
        if client and audio.size < SAMPLE_RATE // 10:
            raise ProtocolError(
                "The input audio buffer holds less than 100 ms of audio to commit.",
                code="input_audio_buffer_commit_empty",
            )
        if self.item is not None:  # the partial's last word is as settled as it gets
            self._send_words(self._words(self._partial, self.item))
        self._emit(
            server_event(
                "input_audio_buffer.committed",
                item_id=item.id,
                previous_item_id=self._previous_item,
            )
        )
        self._previous_item = item.id
        self.item = None
        if client:
            self._fresh_stream()
        task = asyncio.get_running_loop().create_task(self._final(item.id, audio, self.options))
        self._pending_finals.add(task)
        task.add_done_callback(self._pending_finals.discard)

    def _forget_silence(self) -> None:
        """Between turns (VAD on) only the last ``IDLE_KEEP_S`` can still become the
        start of a turn (prefix padding, the step's lag): drop what is older, now and
        then, so a session left open in silence holds little."""
        if self._received - self._buffer_start > (IDLE_KEEP_S + 10) * SAMPLE_RATE:
            self._take_audio(self._buffer_start, self._received - IDLE_KEEP_S * SAMPLE_RATE)

    def _take_audio(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) of the buffer; what is before ``end`` is dropped."""
        joined = np.concatenate(self._audio) if self._audio else np.zeros(0, np.float32)
        lo, hi = max(start - self._buffer_start, 0), max(end - self._buffer_start, 0)
        taken = joined[lo:hi]
        self._audio = [joined[hi:]]
        self._buffer_start = max(end, self._buffer_start)
        return taken

    async def _final(self, item_id: str, audio: np.ndarray, options: DecodeOptions) -> None:
        try:
            text = await self._finals(audio, options)
        except Exception as exc:  # the batch path's typed errors carry their message
            self._emit_failed(
                item_id, getattr(exc, "code", None), str(exc) or "transcription failed"
            )
            return
        self._emit(
            server_event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=text,
                usage={"type": "duration", "seconds": round(audio.size / SAMPLE_RATE, 3)},
            )
        )

    async def drain(self) -> None:
        """Wait for every final still being transcribed (before closing)."""
        if self._pending_finals:
            await asyncio.gather(*self._pending_finals, return_exceptions=True)

    # ------------------------------------------------------------------ step results

    def on_step(self, out: StepOutput) -> None:
        """What one batched chunk step found for this session's stream."""
        self._partial = out.tokens
        spoke = out.trailing_quiet < out.frames
        self._quiet_frames = out.trailing_quiet if spoke else self._quiet_frames + out.frames
        segment = self.stream.segment
        for event in out.events:
            if isinstance(event, SpeechStarted):
                self._speech_started(event.frame)
            elif isinstance(event, SpeechStopped):  # always the step's last event
                self._speech_stopped(event.frame, replay=out.replay)
        if self.item is not None and self.stream.segment == segment:
            words = self._words(out.tokens, self.item)
            settled = self._quiet_frames * FRAME_MS >= WORD_SETTLE_MS
            self._send_words(words if settled else words[:-1])
        if self.stream.encoder.offset >= self._max_segment_frames:
            self._next_segment()  # without VAD: the encoder still needs a reset

    def step_failed(self) -> None:
        """A step (or this session's part of it) raised: tell the client, and start the
        partials afresh from the next chunk; the turn and its final go on."""
        self._emit(
            server_event(
                "error",
                error={
                    "type": "server_error",
                    "code": "step_failed",
                    "message": "Live decoding of a chunk failed; partials go on from the "
                    "next chunk, and finals are not affected.",
                },
            )
        )
        self._next_segment()

    def _speech_started(self, frame: int) -> None:
        pad = self.settings.turn_detection.prefix_padding_ms if self.settings.turn_detection else 0
        start_ms = max(
            self._stream_origin_ms + frame * FRAME_MS - pad,
            self._buffer_start * 1000 // SAMPLE_RATE,
        )
        self.item = Item(new_id("item"), start_ms * SAMPLE_RATE // 1000)
        self._emit(
            server_event(
                "input_audio_buffer.speech_started", audio_start_ms=start_ms, item_id=self.item.id
            )
        )

    def _speech_stopped(self, frame: int, replay: int) -> None:
        if self.item is not None:  # else a client's commit or clear already ended the turn
            end_ms = self._stream_origin_ms + frame * FRAME_MS
            stopped = server_event(
                "input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=self.item.id
            )
            self._emit(stopped)
            end = min(end_ms * SAMPLE_RATE // 1000, self._received)
            self._commit(client=False, end_sample=end)
        self._next_segment(replay)

    def _next_segment(self, replay: int = 0) -> None:
        if self.item is not None:
            self.item.earlier_words = self._words(self._partial, self.item)
        self._partial = ()
        self._quiet_frames = 0
        self.stream.new_segment(replay)

    def _fresh_stream(self) -> None:
        """A new stream from the buffer's end (at a restart, or after a client's commit:
        the committed audio's frames still waiting for a step, and the endpointer's
        state, belong to the committed turn and must not leak into the next one)."""
        self.stream = self._stream_factory(self.settings)
        self._stream_origin_ms = self._received * 1000 // SAMPLE_RATE  # the stream's frame 0
        self._partial: tuple[int, ...] = ()  # the segment's best hypothesis so far
        self._quiet_frames = 0  # blank frames since the segment's last spike

    def abandon_turn(self, message: str, code: str) -> None:
        """A turn announced to the client (speech_started or deltas) that will not be
        committed gets its one ``failed`` event, so every item id ends."""
        if self.item is None:
            return
        self._emit_failed(self.item.id, code, message)
        self.item = None

    def _emit_failed(self, item_id: str, code: str | None, message: str) -> None:
        self._emit(
            server_event(
                "conversation.item.input_audio_transcription.failed",
                item_id=item_id,
                content_index=0,
                error={"type": "transcription_failed", "code": code, "message": message},
            )
        )

    def _words(self, tokens: tuple[int, ...], item: Item) -> list[str]:
        return item.earlier_words + self._detokenize(tokens).split()

    def _send_words(self, words: list[str]) -> None:
        """A delta with the words past as many as were sent. Deltas are append-only, so
        a revision of a word already sent stays in the partial text (the final settles
        it), but the words after it still go out: stopping there lost the rest of the
        turn's partial."""
        item = self.item
        assert item is not None
        sent = item.sent_words
        if len(words) <= len(sent):
            return
        delta = (" " if sent else "") + " ".join(words[len(sent) :])
        item.sent_words = sent + words[len(sent) :]
        self._emit(
            server_event(
                "conversation.item.input_audio_transcription.delta",
                item_id=item.id,
                content_index=0,
                delta=delta,
            )
        )
