"""The training loop: pools prefetched on the other core, AdamW, warmup + cosine.

Separate from the recipe's orchestration so that the loop's own random draws (batch
order from ``seed``, SpecAugment from a torch generator seeded alike) are easy to see
and keep: a rebuild gives the same model only if they happen in the same order.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

import numpy as np
import torch

from scripts.demo_model.batches import collate, make_batches
from scripts.demo_model.data import Example, ExampleStream
from scripts.demo_model.evaluate import greedy_wer
from scripts.demo_model.losses import CrossAttentionProbe, forward_with_onsets


def keep_freed_memory() -> None:
    """Stop glibc from returning freed activations to the kernel after every step.

    Each step allocates and frees the same ~100 MB of activations; by default glibc
    trims and re-faults those pages every time: about 47,000 page faults a second,
    a sixth of the training process's CPU time in system calls, and a step 1.1-1.4x
    slower on this VM (isolated step benchmark, with and without these settings).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_trim_threshold, 2**31)
    libc.mallopt(m_top_pad, 2**28)
    # Blocks above the mmap threshold (dynamic, at most 32 MB) are unmapped on free;
    # a fixed 1 GB threshold keeps them in the heap too.
    libc.mallopt(m_mmap_threshold, 2**30)


def lr_schedule(peak_lr: float, warmup: int, steps: int) -> Callable[[int], float]:
    """Linear warmup to ``peak_lr``, then a cosine down to 3% of it at ``steps``."""

    def lr_at(step: int) -> float:
        if step < warmup:
            return peak_lr * (step + 1) / warmup
        frac = (step - warmup) / max(steps - warmup, 1)
        return peak_lr * (0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * frac)))

    return lr_at


def stream_batches(
    stream: ExampleStream, max_frames: int, rng: random.Random
) -> Iterator[list[Example]]:
    """Batches of pool 0, 1, 2, ... while the next pool is assembled on the other core.

    Pools are batched only when reached, so ``rng`` is drawn once per pool trained on,
    exactly as many times as the loop needs.
    """
    k = 0
    with ThreadPoolExecutor(1) as prefetch:
        upcoming = prefetch.submit(stream.pool, 0)
        while True:
            examples = upcoming.result()
            upcoming = prefetch.submit(stream.pool, k + 1)
            batches = make_batches(examples, max_frames, rng)
            if k == 0:  # SortaGrad: the first pool runs short utterances first
                batches.sort(key=lambda b: max(examples[i].feats.shape[0] for i in b))
            k += 1
            for batch in batches:
                yield [examples[i] for i in batch]


def log_step(
    step: int, steps: int, out: dict[str, torch.Tensor], chosen: list[Example], lr: float, t0: float
) -> None:
    """One progress line: the loss terms, CTC loss per target token, accuracy, time."""
    n_tok = np.mean([len(e.target) for e in chosen])
    print(
        f"step {step}/{steps} loss {out['loss'].item():.3f} "
        f"ctc {out['loss_ctc'].item():.3f} att {out['loss_att'].item():.3f} "
        f"ctc/token {out['loss_ctc'].item() / n_tok:.2f} "
        f"acc {float(out['th_accuracy']):.3f} "
        f"outside {out['outside'].item():.3f} lr {lr:.2e} "
        f"{time.time() - t0:.0f}s",
        flush=True,
    )


def log_validation(
    step: int,
    model: torch.nn.Module,
    validation: dict[str, list[Example]],
    sp: Any,
    streaming: bool = False,
) -> None:
    """Greedy WER of every validation set (and, for a streaming model, of the continuous
    one at chunk 16): a progress signal, nothing is selected on it."""
    wers = {name: greedy_wer(model, exs, sp) for name, exs in validation.items()}
    if streaming and "continuous" in validation:
        wers["continuous-chunk16"] = greedy_wer(model, validation["continuous"], sp, chunk=16)
    print(
        f"step {step}: greedy WER " + " ".join(f"{name} {w:.3f}" for name, w in wers.items()),
        flush=True,
    )


def train(
    model: torch.nn.Module,
    stream: ExampleStream,
    *,
    steps: int,
    seed: int,
    max_frames: int,
    peak_lr: float,
    warmup: int,
    fill: torch.Tensor,
    ce_weight: float = 0.2,
    att_per_token: bool = False,
    guide_weight: float = 0.0,
    log_every: int = 50,
    validation: dict[str, list[Example]] | None = None,
    validate_every: int = 250,
    chunk_from: int | None = None,
    full_context_share: float = 0.5,
) -> None:
    """Train ``model`` in place for ``steps`` steps and leave it in eval mode.

    ``fill`` is the mean feature SpecAugment writes into its masks. From step
    ``chunk_from`` on (None: never), batches train with dynamic chunks as Reverb's
    encoder does: a share ``full_context_share`` with full context, the rest with an
    attention chunk of 1-25 frames (wenet's range: up to 1 s of delay) and all left
    chunks, so that the model decodes with ``decoding_chunk_size`` 16 or 8 and chunk by
    chunk with caches. The first steps are full-context because the onset labels that
    break CTC's all-blank plateau are only used there (see ``forward_with_onsets``).
    """
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    chunk_rng = random.Random(seed + 11)  # its own stream: the batches stay as they were
    model.train()
    # The conv2d subsampling is the largest cost of a CPU step; oneDNN runs it 1.4x
    # faster in channels-last layout (same arithmetic). Undone before saving.
    model.encoder.embed.conv.to(memory_format=torch.channels_last)
    probe = CrossAttentionProbe(model) if guide_weight > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(0.9, 0.98), weight_decay=1e-3)
    lr_at = lr_schedule(peak_lr, warmup, steps)
    step, t0 = 0, time.time()
    # Nothing is assembled when there is nothing to train (--steps 0).
    with closing(stream_batches(stream, max_frames, rng)) as batches:
        for chosen in batches if steps > 0 else ():
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            data = collate(chosen, fill, gen)
            full, size = chunk_rng.random() < full_context_share, chunk_rng.randint(1, 25)
            chunk = -1 if chunk_from is None or step < chunk_from or full else size
            out = forward_with_onsets(
                model,
                data,
                [e.frames for e in chosen],
                ce_weight,
                probe,
                att_per_token=att_per_token,
                guide_weight=guide_weight,
                chunk=chunk,
            )
            opt.zero_grad()
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            if step % log_every == 0 or step == 1:
                log_step(step, steps, out, chosen, lr_at(step), t0)
            if validation and (step % validate_every == 0 or step == steps):
                log_validation(step, model, validation, stream.sp, chunk_from is not None)
            if step >= steps:
                break
    model.encoder.embed.conv.to(memory_format=torch.contiguous_format)
    model.eval()
