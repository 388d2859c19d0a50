"""Attention rescoring of many rows' n-best lists in one decoder forward.

wenet's ``attention_rescoring`` runs the decoder once per row (repeating that row's
encoder output per hypothesis) and then scores every token with a 0-d tensor index in
Python. Here all rows' hypotheses share one decoder forward over the padded encoder
output with its mask, and the token scores come from one ``gather``. The score is
wenet's: forward decoder log-likelihood of the tokens plus <eos>, mixed with the
right-to-left decoder's by ``reverse_weight``, plus ``ctc_weight`` times the CTC
prefix score; the first best hypothesis wins, as in wenet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from serve_app.engine.prefix_search import PrefixNbest

# Hypotheses per decoder forward: bounds the repeated encoder output
# (hyps x frames x d_model floats) while keeping the forward count low.
MAX_HYPS_PER_FORWARD = 256


@dataclass
class Rescored:
    tokens: list[int]
    confidences: list[float]


def batched_attention_rescoring(
    model: torch.nn.Module,
    nbests: list[PrefixNbest],
    encoder_out: torch.Tensor,
    encoder_lens: torch.Tensor,
    cat_embs: torch.Tensor | None,
    ctc_weight: float,
    reverse_weight: float,
) -> list[Rescored]:
    """Best hypothesis of each row (``encoder_out`` row b goes with ``nbests[b]``)."""
    owners = [b for b, nb in enumerate(nbests) for _ in nb.hyps]
    hyps = [h for nb in nbests for h in nb.hyps]
    ctc_scores = [s for nb in nbests for s in nb.scores]
    scores: list[float] = []
    conf_tables: list[np.ndarray] = []  # one (hyps x width) table per decoder forward
    for start in range(0, len(hyps), MAX_HYPS_PER_FORWARD):
        sl = slice(start, start + MAX_HYPS_PER_FORWARD)
        logp, r_logp, lens = _token_log_probs(
            model, hyps[sl], owners[sl], encoder_out, encoder_lens, cat_embs, reverse_weight
        )
        s, c = _scores_and_confidences(logp, r_logp, lens, reverse_weight)
        scores += s
        conf_tables.append(c)
    best: list[tuple[float, int] | None] = [None] * len(nbests)
    for h, score in enumerate(scores):
        score += ctc_scores[h] * ctc_weight
        b = owners[h]
        if best[b] is None or score > best[b][0]:
            best[b] = (score, h)
    out = []
    for entry in best:
        if entry is None:  # an empty n-best list: nothing was recognised
            out.append(Rescored([], []))
            continue
        h = entry[1]
        # Only the chosen hypothesis' confidences become Python floats.
        table = conf_tables[h // MAX_HYPS_PER_FORWARD]
        conf = table[h % MAX_HYPS_PER_FORWARD, : len(hyps[h])].tolist()
        out.append(Rescored(list(hyps[h]), conf))
    return out


def _scores_and_confidences(
    logp: torch.Tensor, r_logp: torch.Tensor | None, lens: torch.Tensor, reverse_weight: float
) -> tuple[list[float], np.ndarray]:
    """wenet's decoder score and per-token confidences of every hypothesis at once.

    ``logp[i, j]`` is the log-probability of token j (then <eos> at j = len); the
    right-to-left row scores the reversed hypothesis, so its token j is at len-1-j.
    """
    positions = torch.arange(logp.shape[1], device=logp.device)
    scored = positions <= lens.unsqueeze(1)  # the tokens and <eos>
    score = logp.masked_fill(~scored, 0.0).sum(1)
    conf = logp.exp()
    if r_logp is not None:
        r_score = r_logp.masked_fill(~scored, 0.0).sum(1)
        score = score * (1 - reverse_weight) + r_score * reverse_weight
        mirror = (lens.unsqueeze(1) - 1 - positions).clamp_min(0)
        conf = (conf + r_logp.gather(1, mirror).exp()) / 2
    return score.tolist(), conf.cpu().numpy()


def _token_log_probs(
    model: torch.nn.Module,
    hyps: list[tuple[int, ...]],
    owners: list[int],
    encoder_out: torch.Tensor,
    encoder_lens: torch.Tensor,
    cat_embs: torch.Tensor | None,
    reverse_weight: float,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(hyps x len+1) log p of each token then <eos>, left-to-right and right-to-left
    (None when ``reverse_weight`` is 0), and the hypotheses' lengths."""
    device = encoder_out.device
    sos, eos = model.sos_symbol(), model.eos_symbol()
    own = torch.tensor(owners, device=device)
    lens = torch.tensor([len(h) for h in hyps], device=device)
    # Token tables are filled in numpy and copied to the device once, not per hypothesis.
    width = max(len(h) for h in hyps) + 1
    ys_in = np.full((len(hyps), width), eos, dtype=np.int64)
    r_ys_in = ys_in.copy()
    target = np.zeros_like(ys_in)
    r_target = np.zeros_like(ys_in)
    ys_in[:, 0] = sos
    r_ys_in[:, 0] = sos
    for i, h in enumerate(hyps):
        n = len(h)
        ys_in[i, 1 : n + 1] = h
        r_ys_in[i, 1 : n + 1] = h[::-1]
        target[i, :n] = h
        r_target[i, :n] = h[::-1]
        target[i, n] = eos
        r_target[i, n] = eos
    ys_in, r_ys_in, target, r_target = (
        torch.from_numpy(a).to(device) for a in (ys_in, r_ys_in, target, r_target)
    )
    frames = int(encoder_lens[own].max())
    memory = encoder_out[own, :frames]
    memory_mask = (torch.arange(frames, device=device) < encoder_lens[own].unsqueeze(1)).unsqueeze(
        1
    )
    embs = cat_embs[own] if cat_embs is not None else None
    if getattr(model, "lsl_dec", False):
        out, r_out, _ = model.decoder(
            memory, memory_mask, ys_in, lens + 1, r_ys_in, reverse_weight, embs
        )
    else:
        out, r_out, _ = model.decoder(memory, memory_mask, ys_in, lens + 1, r_ys_in, reverse_weight)
    logp = _target_log_probs(out, target)
    if reverse_weight > 0 and r_out.dim() > 0:
        return logp, _target_log_probs(r_out, r_target), lens
    return logp, None, lens


def _target_log_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits) at ``target``, a slice of positions at a time.

    A (hyps x len x vocab) log-softmax is ~115 MB for 160 hypotheses of 18 tokens over
    10k units; in cache-sized slices the same values came out 3x faster on a CPU.
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    index = target.reshape(-1, 1)
    picked = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    step = 64 if logits.device.type == "cpu" else 4096  # a GPU wants fewer, larger kernels
    for start in range(0, flat.shape[0], step):
        rows = slice(start, start + step)
        lp = torch.log_softmax(flat[rows].float(), dim=-1)
        picked[rows] = lp.gather(1, index[rows]).squeeze(1)
    return picked.view(target.shape)
