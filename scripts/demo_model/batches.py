"""Training batches: length-sorted under a padded-frame budget, with SpecAugment.

Kept apart from ``data`` (which makes the examples): this is only how a pool of
finished examples becomes the batch dicts wenet's ``ASRModel`` reads.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from scripts.demo_model.data import Example
from serve_app.engine.features import NUM_MEL_BINS


def spec_augment(x: torch.Tensor, fill: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Two frequency masks of up to 8 bins, filled with the mean feature."""
    x = x.clone()
    for _ in range(2):
        w = int(torch.randint(0, 9, (1,), generator=gen))
        f0 = int(torch.randint(0, NUM_MEL_BINS - w, (1,), generator=gen))
        x[:, f0 : f0 + w] = fill[f0 : f0 + w]
    return x


def make_batches(examples: list[Example], max_frames: int, rng: random.Random) -> list[list[int]]:
    """Length-sorted batches under a padded-frame budget, in shuffled order.

    Sorting keeps padding small (a CPU step's cost is padded frames); shuffling the
    batches keeps long and short ones mixed through the pool.
    """
    order = sorted(range(len(examples)), key=lambda i: examples[i].feats.shape[0])
    batches, cur, longest = [], [], 0
    for i in order:
        n = examples[i].feats.shape[0]
        if cur and max(longest, n) * (len(cur) + 1) > max_frames:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], fill: torch.Tensor, gen: torch.Generator) -> dict[str, Any]:
    """The batch dict wenet's ASRModel reads, with SpecAugment applied per row."""
    from torch.nn.utils.rnn import pad_sequence

    feats = [spec_augment(e.feats, fill, gen) for e in examples]
    return {
        "feats": pad_sequence(feats, batch_first=True),
        "feats_lengths": torch.tensor([f.shape[0] for f in feats], dtype=torch.int32),
        "target": pad_sequence(
            [torch.tensor(e.target) for e in examples], batch_first=True, padding_value=-1
        ),
        "target_lengths": torch.tensor([len(e.target) for e in examples], dtype=torch.int32),
        "cat_embs": torch.tensor([e.style for e in examples]),
        "langs": ["en"] * len(examples),
        "tasks": ["transcribe"] * len(examples),
    }
