"""Split audio into decode chunks on Rev's fixed feature-frame grid.

Rev's ``ReverbASR`` computes fbank over the whole file and cuts the frames into
consecutive 2051-frame chunks (~20.5 s) with no overlap. Kaldi fbank frames depend
only on their own 400 samples (dither 0, snip_edges), so cutting the *samples* at
frame ``k * 2051`` and computing fbank per chunk gives exactly Rev's features while
letting each chunk travel to a different replica on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serve_app.engine.options import DecodeOptions
from serve_app.wire import ChunkJob, ChunkResult, Word

SAMPLE_RATE = 16000
FRAME_SHIFT_SAMPLES = 160  # 10 ms
FRAME_LENGTH_SAMPLES = 400  # 25 ms
CHUNK_FRAMES = 2051  # Rev's chunk_size


@dataclass(frozen=True)
class ChunkPlan:
    """One chunk: which samples to decode and where its times start."""

    index: int
    start_frame: int
    num_frames: int
    start_sample: int
    end_sample: int

    @property
    def offset_ms(self) -> int:
        """Chunk start in ms on Rev's grid (``index * chunk_size * 10 ms``)."""
        return self.start_frame * FRAME_SHIFT_SAMPLES * 1000 // SAMPLE_RATE


def num_frames(num_samples: int) -> int:
    """Kaldi fbank frame count with snip_edges=True."""
    if num_samples < FRAME_LENGTH_SAMPLES:
        return 0
    return 1 + (num_samples - FRAME_LENGTH_SAMPLES) // FRAME_SHIFT_SAMPLES


def plan_chunks(num_samples: int, chunk_frames: int = CHUNK_FRAMES) -> list[ChunkPlan]:
    """Chunks covering every fbank frame of ``num_samples`` samples, in order."""
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be positive")
    total = num_frames(num_samples)
    plans = []
    for index, start in enumerate(range(0, total, chunk_frames)):
        frames = min(chunk_frames, total - start)
        start_sample = start * FRAME_SHIFT_SAMPLES
        end_sample = start_sample + (frames - 1) * FRAME_SHIFT_SAMPLES + FRAME_LENGTH_SAMPLES
        plans.append(ChunkPlan(index, start, frames, start_sample, end_sample))
    return plans


def chunk_jobs(waveform: np.ndarray, options: DecodeOptions) -> list[ChunkJob]:
    """One job per chunk on Rev's 2051-frame grid."""
    return [
        ChunkJob(waveform[p.start_sample : p.end_sample], p.offset_ms, options)
        for p in plan_chunks(waveform.shape[0])
    ]


def merge_chunks(results: Sequence[ChunkResult]) -> list[Word]:
    """Chunk words are already absolute; keep them in time order."""
    words: list[Word] = []
    for result in results:
        words.extend(result.words)
    return words
