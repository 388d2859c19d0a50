"""Chunk planning follows Rev's fixed 2051-frame grid exactly."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.engine.chunking import CHUNK_FRAMES, num_frames, plan_chunks


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=16000 * 3600), st.integers(1, 4000))
def test_chunks_tile_every_frame_once(num_samples: int, chunk_frames: int) -> None:
    plans = plan_chunks(num_samples, chunk_frames)
    assert sum(p.num_frames for p in plans) == num_frames(num_samples)
    expected_start = 0
    for i, p in enumerate(plans):
        assert p.index == i
        assert p.start_frame == expected_start == i * chunk_frames
        assert 1 <= p.num_frames <= chunk_frames
        assert p.end_sample <= num_samples
        assert num_frames(p.end_sample - p.start_sample) == p.num_frames
        assert p.offset_ms == i * chunk_frames * 10
        expected_start += p.num_frames


def test_rev_grid_offsets() -> None:
    plans = plan_chunks(16000 * 50)
    assert [p.offset_ms for p in plans] == [0, 20510, 41020]
    assert [p.num_frames for p in plans] == [CHUNK_FRAMES, CHUNK_FRAMES, 4998 - 2 * CHUNK_FRAMES]


def test_per_chunk_fbank_equals_whole_file_fbank() -> None:
    """Cutting samples on the grid reproduces Rev's whole-file features bit for bit."""
    from torchaudio.compliance import kaldi

    rng = np.random.default_rng(3)
    audio = torch.from_numpy(rng.normal(0, 3000, 16000 * 45).astype(np.float32))

    def fbank(x: torch.Tensor) -> torch.Tensor:
        return kaldi.fbank(
            x.unsqueeze(0), num_mel_bins=80, dither=0.0, energy_floor=0.0, sample_frequency=16000
        )

    whole = fbank(audio)
    parts = [fbank(audio[p.start_sample : p.end_sample]) for p in plan_chunks(audio.numel())]
    assert torch.equal(torch.cat(parts), whole)


def test_short_audio_has_no_chunks() -> None:
    assert plan_chunks(0) == []
    assert plan_chunks(399) == []
    assert len(plan_chunks(400)) == 1
