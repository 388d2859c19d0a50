"""Partial transcripts of many live streams, one batched chunk step at a time.

Each :class:`LiveStream` turns pushed audio into fbank frames (incrementally) and keeps
its encoder position (the caches are in the stepper's slots), its prefix-search beams
and its endpointer. :class:`LiveStepper`
takes every stream that has a full chunk window and runs **one** encoder step for all
of them, then the CTC log-softmax, the blank probabilities for endpointing and one
prefix-search advance, all on the model's device; only the blank probabilities and
the beams' small tensors come back to the host.

A stream's segment ends where its endpointer says (or when the session commits); the
caller then starts a new segment with :meth:`LiveStream.new_segment`, so encoder
positions and caches never outgrow the positional table. Finals do not come from
here: the segment's audio goes through the batch path (full context, rescoring).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from serve_app.engine.features import NUM_MEL_BINS, IncrementalFbank
from serve_app.engine.model import ReverbModel
from serve_app.engine.prefix_search import PrefixBeams
from serve_app.engine.streaming import BatchedChunkEncoder, EncoderStream, chunk_window
from serve_app.live.endpointing import Endpointer, EndpointRules, Event

DEFAULT_CHUNK = 16  # encoder frames (640 ms), as Reverb's streaming decode is run
SPIKE_THRESHOLD = 0.5  # a frame below this blank probability is where CTC emits a token


@dataclass
class StepOutput:
    """What one step told one stream."""

    tokens: tuple[int, ...]
    """The best hypothesis of the segment so far."""
    events: list[Event] = field(default_factory=list)
    """Speech starts and stops found in this step's frames."""
    segment: int = 0
    """The stream's segment the step ran in: a result for an earlier one is stale."""
    trailing_quiet: int = 0
    """Frames at the end of this step's chunk after its last spike (the chunk's length
    when nothing was spoken in it): how long the hypothesis's last word has been
    followed by blanks, so a caller can tell a finished word from one still heard."""
    frames: int = 0
    """The chunk's encoder frames that this segment used (all of them unless a speech
    stop ended the segment inside the chunk)."""
    replay: int = 0
    """Feature frames after a speech stop in this chunk: neither judged nor decoded as
    the ending segment's, they are decoded again as the next segment's start (see
    :meth:`LiveStream.new_segment`), so a word spoken right after the stop is not
    heard by the segment before it."""


@dataclass
class TakenChunks:
    """What a step reads, taken from the streams at one moment (on the event loop),
    so that audio pushed or a segment started while the step runs elsewhere is not
    mixed into it."""

    streams: list[LiveStream]
    windows: torch.Tensor
    encoders: list[EncoderStream]
    beams: list[PrefixBeams]
    segments: list[int]


class LiveStream:
    """One live stream's decoding state."""

    def __init__(
        self,
        verbatimicity: float,
        *,
        beam_size: int,
        device: torch.device,
        rules: EndpointRules | None = None,
    ) -> None:
        self.verbatimicity = verbatimicity
        self.beam_size = beam_size
        self.device = device
        self.fbank = IncrementalFbank()
        self._unframed: list[np.ndarray] = []  # pushed samples not yet made into frames
        self._unframed_samples = 0
        self.pending = torch.zeros(0, NUM_MEL_BINS)  # frames no step has taken
        self.endpointer = Endpointer(rules) if rules is not None else None
        self.segment = -1
        self._stepped = torch.zeros(0, NUM_MEL_BINS)  # the frames the last window moved past
        self.new_segment()

    def new_segment(self, replay: int = 0) -> None:
        """Empty caches and beams: the next chunk starts a segment at position 0, from
        the last ``replay`` feature frames that the last step moved past (a step's
        :attr:`StepOutput.replay`) or else from the frames not yet taken."""
        if replay:
            self.pending = torch.cat([self._stepped[-replay:], self.pending])
        self._stepped = self._stepped[:0]
        self.segment += 1
        style = torch.tensor([self.verbatimicity, 1.0 - self.verbatimicity])
        self.encoder = EncoderStream(cat_emb=style)
        self.beams = PrefixBeams.start(1, self.beam_size, self.device)

    def push(self, samples: np.ndarray) -> None:
        """16 kHz float samples in [-1, 1], any number. Their fbank frames are computed
        when a step takes them (``take_window``), a chunk's worth at a time: torchaudio's
        fbank rebuilds its window and mel banks on every call, and called for every
        40 ms append it was a fifth of a busy realtime replica's time, more than the
        model's steps."""
        self._unframed.append(np.asarray(samples, np.float32))
        self._unframed_samples += len(samples)

    @property
    def frames_ready(self) -> int:
        """Feature frames that the pushed audio makes and no step has taken yet."""
        return self.pending.size(0) + self.fbank.frames_after(self._unframed_samples)

    @property
    def backlog_s(self) -> float:
        """Seconds of pushed audio no step has taken yet (fbank frames are 10 ms)."""
        return self.frames_ready / 100

    def has_chunk(self, window: int) -> bool:
        return self.frames_ready >= window

    def _compute_frames(self) -> None:
        if self._unframed:
            frames = self.fbank.push(np.concatenate(self._unframed))
            self._unframed, self._unframed_samples = [], 0
            if frames.numel():
                self.pending = torch.cat([self.pending, frames])

    def take_window(self, window: int, stride: int) -> torch.Tensor:
        """The next chunk window; its last ``window - stride`` frames stay for the next
        one (the subsampling's right context overlaps, as in forward_chunk_by_chunk)."""
        self._compute_frames()
        taken = self.pending[:window]
        self._stepped = self.pending[:stride]
        self.pending = self.pending[stride:]
        return taken


class LiveStepper:
    """One model's batched chunk step (see the module docstring)."""

    def __init__(self, model: ReverbModel, chunk_size: int = DEFAULT_CHUNK) -> None:
        self.model = model
        self.chunk_size = chunk_size
        self.encoder = BatchedChunkEncoder(model.model.encoder)
        self.window, self.stride = chunk_window(model.model.encoder, chunk_size)
        self.subsampling = self.stride // chunk_size

    def ready(self, streams: list[LiveStream]) -> list[LiveStream]:
        return [s for s in streams if s.has_chunk(self.window)]

    def step(self, streams: list[LiveStream]) -> list[StepOutput]:
        """Advance every stream (each must have a chunk) by one chunk."""
        return self.compute(self.take(streams))

    def take(self, streams: list[LiveStream]) -> TakenChunks:
        """Each stream's next chunk window and the state the step will advance."""
        windows = torch.stack([s.take_window(self.window, self.stride) for s in streams])
        return TakenChunks(
            streams,
            windows,
            [s.encoder for s in streams],
            [s.beams for s in streams],
            [s.segment for s in streams],
        )

    @torch.inference_mode()
    def compute(self, taken: TakenChunks) -> list[StepOutput]:
        """The step itself; may run off the event loop (it touches only ``taken``'s
        states and each stream's endpointer, which only steps feed)."""
        device = self.model.device
        encoded = self.encoder.step(taken.encoders, taken.windows.to(device))
        log_probs = self.model.model.ctc.log_softmax(encoded)  # (B, chunk, vocab)
        blank = log_probs[..., self.model.blank_id].exp().cpu().numpy()
        judged = [
            s.endpointer.feed_to_stop(blank[row]) if s.endpointer else ([], blank.shape[1])
            for row, s in enumerate(taken.streams)
        ]
        used = np.array([frames for _, frames in judged])
        beams = PrefixBeams.stack(taken.beams)
        beams.advance(log_probs, torch.from_numpy(used), blank_id=self.model.blank_id)
        quiet = trailing_quiet_frames(blank, used)
        bests = beams.split(taken.beams)
        replay = (blank.shape[1] - used) * self.subsampling
        return [
            StepOutput(
                bests[row], events, taken.segments[row], int(quiet[row]), frames, int(replay[row])
            )
            for row, (events, frames) in enumerate(judged)
        ]


def trailing_quiet_frames(
    blank: np.ndarray, used: np.ndarray, threshold: float = SPIKE_THRESHOLD
) -> np.ndarray:
    """Per row of (rows, frames) blank probabilities, over its first ``used`` frames:
    the frames after the last spike (a frame whose blank probability is under
    ``threshold``), or all of them if none."""
    frames = blank.shape[1]
    spike = (blank < threshold) & (np.arange(frames) < used[:, None])
    last_from_end = spike[:, ::-1].argmax(axis=1)  # counted from the chunk's end
    return np.where(spike.any(axis=1), last_from_end - (frames - used), used)
