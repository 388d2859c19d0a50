"""A loaded Reverb model: the wenet network plus what decoding needs beside it."""

from __future__ import annotations

import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from serve_app.engine.model_loader import (
    ModelFiles,
    init_args,
    locate_model_files,
    model_id,
    resolve_model_dir,
    wenet_configs,
)
from serve_app.wire import ModelLoadError

log = logging.getLogger(__name__)

_SUBSAMPLING = {"linear": 1, "conv2d": 4, "conv2d6": 6, "conv2d8": 8}
DEFAULT_TIMINGS_ADJUSTMENT_MS = 230.0  # Rev's CLI default, tuned for reverb_asr_v1


@dataclass
class ReverbModel:
    """Everything the batched decoder needs, built once per replica."""

    name: str
    files: ModelFiles
    model: torch.nn.Module
    tokenizer: Any
    configs: dict[str, Any]
    device: torch.device
    blank_id: int
    frame_shift_ms: int
    output_frame_ms: int
    num_mel_bins: int
    frame_length_ms: int
    timings_adjustment_ms: float

    @property
    def sos(self) -> int:
        return int(self.model.sos)

    @property
    def eos(self) -> int:
        return int(self.model.eos)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def select_device(requested: str) -> torch.device:
    """``auto`` takes CUDA when present; asking for CUDA without one is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device {requested!r} was requested but no CUDA GPU is visible; use "
                "device 'cpu' or 'auto', or run on a GPU node."
            )
        return torch.device(requested)
    if requested == "cpu":
        return torch.device("cpu")
    raise ModelLoadError(f"Unknown device {requested!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")


def load_model(
    ref: str,
    *,
    device: str = "auto",
    cache_dir: Path | None = None,
    checkpoint_name: str | None = None,
    name: str | None = None,
) -> ReverbModel:
    """Resolve, build and strictly load a Reverb model, ready for inference."""
    from wenet.utils.ctc_utils import get_blank_id
    from wenet.utils.init_model import init_model
    from wenet.utils.init_tokenizer import init_tokenizer

    torch_device = select_device(device)
    directory = resolve_model_dir(ref, cache_dir=cache_dir)
    files = locate_model_files(directory, checkpoint_name=checkpoint_name)
    configs = wenet_configs(files)
    try:
        tokenizer = init_tokenizer(configs)
        _, blank_id = get_blank_id(configs, tokenizer.symbol_table)
        configs["output_dim"] = len(tokenizer.symbol_table)
        model, configs = init_model(init_args(), configs)
    except (KeyError, TypeError, ValueError, AssertionError, OSError, RuntimeError) as exc:
        raise ModelLoadError(
            f"config.yaml in {directory} does not describe a Reverb model ({exc!r}); use "
            "the config that came with the weights."
        ) from exc
    load_weights_strict(model, files.checkpoint)
    model.to(torch_device).eval()
    fbank = configs["dataset_conf"]["fbank_conf"]
    input_layer = configs["encoder_conf"].get("input_layer", "conv2d")
    serving = configs.get("serving_conf") or {}
    return ReverbModel(
        name=name or model_id(ref),
        files=files,
        model=model,
        tokenizer=tokenizer,
        configs=configs,
        device=torch_device,
        blank_id=int(blank_id),
        frame_shift_ms=int(fbank["frame_shift"]),
        output_frame_ms=int(fbank["frame_shift"]) * _SUBSAMPLING.get(input_layer, 4),
        num_mel_bins=int(fbank["num_mel_bins"]),
        frame_length_ms=int(fbank["frame_length"]),
        timings_adjustment_ms=float(
            serving.get("timings_adjustment_ms", DEFAULT_TIMINGS_ADJUSTMENT_MS)
        ),
    )


def load_weights_strict(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load weights safely (``weights_only``) and insist every key matches."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(
            f"Checkpoint {checkpoint} is corrupt or not a PyTorch state dict ({exc}); "
            "download it again."
        ) from exc
    if isinstance(state, dict) and "model0" in state:
        state = state["model0"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"Checkpoint {checkpoint} holds no state dict; download it again.")
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelLoadError(
            f"Checkpoint {checkpoint.name} does not match config.yaml: {len(missing)} missing "
            f"keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
            "use the config that came with these weights."
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1] if "\n" in str(exc) else str(exc)
        raise ModelLoadError(
            f"Checkpoint {checkpoint.name} does not match config.yaml ({first.strip()}); use "
            "the config that came with these weights."
        ) from exc
