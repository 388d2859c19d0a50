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
