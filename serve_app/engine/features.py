"""Reverb's input features: one Kaldi fbank for the engine, the model scripts and benches.

Rev's ``compute_feats`` scales [-1, 1] samples to int16 range and runs torchaudio's
Kaldi fbank with dither 0; every place that makes features for a Reverb model (the
decoder, the CMVN of a generated model, the demo recipe) must do exactly that, or a
model trained or calibrated on one set of features is served on another.
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
INT16_SCALE = 32768.0


def kaldi_fbank(
    wave: torch.Tensor,
    *,
    num_mel_bins: int = NUM_MEL_BINS,
    frame_length_ms: float = FRAME_LENGTH_MS,
    frame_shift_ms: float = FRAME_SHIFT_MS,
) -> torch.Tensor:
    """(frames, mel bins) fbank of one int16-scale waveform (1-D, or (1, samples))."""
    from torchaudio.compliance import kaldi

    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2 or wave.shape[0] != 1:
        # kaldi.fbank would quietly take channel 0 of a multi-channel array.
        raise ValueError(f"expected one mono waveform, got shape {tuple(wave.shape)}")
    return kaldi.fbank(
        wave,
        num_mel_bins=num_mel_bins,
        frame_length=frame_length_ms,
        frame_shift=frame_shift_ms,
        dither=0.0,
        energy_floor=0.0,
        sample_frequency=SAMPLE_RATE,
    )


def fbank(
    samples: np.ndarray,
    *,
    num_mel_bins: int = NUM_MEL_BINS,
    frame_length_ms: float = FRAME_LENGTH_MS,
    frame_shift_ms: float = FRAME_SHIFT_MS,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rev's ``compute_feats`` for 16 kHz float samples in [-1, 1]."""
    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32) * INT16_SCALE)
    if device is not None:
        wave = wave.to(device)
    return kaldi_fbank(
        wave,
        num_mel_bins=num_mel_bins,
        frame_length_ms=frame_length_ms,
        frame_shift_ms=frame_shift_ms,
    )


class IncrementalFbank:
    """The fbank of a stream whose samples arrive in pieces of any size.

    Each Kaldi frame (25 ms every 10 ms, edges snipped) depends only on its own 400
    samples, so the frames of the samples so far are final once complete: ``push``
    returns the frames completed by the new samples and keeps the tail the next frame
    starts in. Concatenated, the frames equal ``fbank`` of all the samples at once, to
    float32 rounding (the FFT and mel products run over other numbers of rows).
    """

    def __init__(self) -> None:
        self._tail = np.zeros(0, np.float32)
        self._length = round(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)
        self._shift = round(SAMPLE_RATE * FRAME_SHIFT_MS / 1000)

    def frames_after(self, samples: int) -> int:
        """How many new frames ``push`` of that many more samples would return."""
        total = len(self._tail) + samples
        return 0 if total < self._length else 1 + (total - self._length) // self._shift

    def push(self, samples: np.ndarray) -> torch.Tensor:
        """(new frames, mel bins) for 16 kHz float samples in [-1, 1]."""
        buffer = np.concatenate([self._tail, np.asarray(samples, np.float32)])
        if len(buffer) < self._length:
            self._tail = buffer
            return torch.zeros(0, NUM_MEL_BINS)
        frames = 1 + (len(buffer) - self._length) // self._shift
        self._tail = buffer[frames * self._shift :]
        return fbank(buffer[: (frames - 1) * self._shift + self._length])
