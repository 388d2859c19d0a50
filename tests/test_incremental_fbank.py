"""Live audio's features equal the file path's: the realtime finals and partials rest
on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.engine.features import IncrementalFbank, fbank


@pytest.mark.parametrize("piece_sizes", [[160], [1], [399, 401], [480, 7, 4000, 3]])
def test_fbank_pushed_in_pieces_equals_the_fbank_of_all_the_samples(piece_sizes):
    rng = np.random.default_rng(len(piece_sizes))
    samples = (0.1 * rng.standard_normal(16000 + 123)).astype(np.float32)
    live, frames, at, i = IncrementalFbank(), [], 0, 0
    while at < len(samples):
        size = piece_sizes[i % len(piece_sizes)]
        expected = live.frames_after(len(samples[at : at + size]))
        frames.append(live.push(samples[at : at + size]))
        assert frames[-1].shape[0] == expected
        at, i = at + size, i + 1
    pieces = torch.cat(frames)
    whole = fbank(samples)
    assert pieces.shape == whole.shape == (1 + (len(samples) - 400) // 160, 80)
    torch.testing.assert_close(pieces, whole, atol=1e-4, rtol=1e-5)


def test_fewer_samples_than_a_frame_give_no_frame_yet():
    live = IncrementalFbank()
    assert live.push(np.zeros(399, np.float32)).shape == (0, 80)
    assert live.push(np.zeros(1, np.float32)).shape == (1, 80)
