"""CTC prefix beam search for a whole batch at once, in tensor operations.

wenet's ``ctc_prefix_beam_search`` walks rows, frames, top-k tokens and prefixes in
Python dicts: about a millisecond per frame per row on a CPU, which made it 85-90% of
a decode and left batching nothing to gain (bench/RESULTS.md). This is the same
algorithm (same top-k pruning per frame, same prefix merging, same n-best and scores,
computed in float64 like wenet's Python floats) but each frame is a fixed number of
tensor operations over every row and beam together, so its cost hardly grows with
the batch and it runs on the GPU where the posteriors already are.

It returns tokens and scores only. wenet also tracks a per-token peak frame with a
few quirks (the ``vs_ns`` typo among them); requests for Rev's own timestamp style keep
using wenet's search so that their CTM stays byte-identical to Rev's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

_HASH_MUL = 1_000_003  # prefix hash: h' = h * MUL + token + 1 (int64, wrapping)
_NEG_INF = float("-inf")


@dataclass
class PrefixNbest:
    """One row's n-best prefixes, best first, with their CTC log scores."""

    hyps: list[tuple[int, ...]]
    scores: list[float]

    @property
    def best(self) -> tuple[int, ...]:
        return self.hyps[0]


def _merge_same_prefixes(
    cand_scores: torch.Tensor, cand_hash: torch.Tensor, cand_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge candidates that name the same prefix (equal hash) by log-add.

    ``cand_scores`` holds every candidate's blank-ending then non-blank-ending score
    (B, 2N). Returns per run slot the merged pb and pnb, their total (-inf for unused
    slots) and the run's representative candidate (its first; N where unused).
    """
    batch, n_cand = cand_hash.shape
    # Sort by hash and number the runs of equal hashes.
    sorted_hash, order = cand_hash.sort(dim=1, stable=True)
    new_run = torch.ones_like(sorted_hash, dtype=torch.bool)
    new_run[:, 1:] = sorted_hash[:, 1:] != sorted_hash[:, :-1]
    seg_sorted = new_run.long().cumsum(1) - 1
    seg = torch.empty_like(seg_sorted).scatter_(1, order, seg_sorted)
    merged = _segment_logsumexp(cand_scores, torch.cat([seg, seg + n_cand], 1), 2 * n_cand)
    m_pb, m_pnb = merged[:, :n_cand], merged[:, n_cand:]
    rep = torch.full((batch, n_cand), n_cand, dtype=torch.long, device=cand_hash.device)
    rep = rep.scatter_reduce(1, seg, cand_index, reduce="amin", include_self=True)
    score = torch.logaddexp(m_pb, m_pnb).masked_fill(rep == n_cand, _NEG_INF)
    return m_pb, m_pnb, score, rep


def _segment_logsumexp(values: torch.Tensor, seg: torch.Tensor, size: int) -> torch.Tensor:
    """log(sum(exp)) of ``values`` (B, N) grouped by ``seg`` (B, N) into (B, size)."""
    shape = (values.shape[0], size)
    peak = torch.full(shape, _NEG_INF, dtype=values.dtype, device=values.device)
    peak = peak.scatter_reduce(1, seg, values, reduce="amax", include_self=True)
    safe = torch.where(torch.isinf(peak), torch.zeros_like(peak), peak)
    total = torch.zeros(shape, dtype=values.dtype, device=values.device)
    total = total.scatter_add(1, seg, torch.exp(values - safe.gather(1, seg)))
    return torch.log(total) + safe


def batched_ctc_prefix_beam_search(
    log_probs: torch.Tensor, lengths: torch.Tensor, beam_size: int, blank_id: int = 0
) -> list[PrefixNbest]:
    """n-best prefixes of every row of ``log_probs`` (B, T, V) up to ``lengths``.

    Per frame, each row keeps ``beam_size`` prefixes with their blank-ending and
    non-blank-ending log scores. Candidates are "stay" (same prefix: a blank, or a
    repeat of the last token) and "extend" (prefix + one of the frame's top-k tokens);
    candidates naming the same prefix (equal rolling hash) are merged by log-add, and
    the best ``beam_size`` survive. Parents and emitted tokens are kept per frame and
    the final prefixes are read back by backtracking, so no token lists are copied.
    """
    beams = PrefixBeams.start(log_probs.shape[0], beam_size, log_probs.device)
    beams.advance(log_probs, lengths, blank_id)
    return beams.nbest()


@dataclass
class PrefixBeams:
    """The search's state for a batch of rows, resumable frame after frame.

    The offline search runs every frame in one ``advance``; a live stream advances one
    chunk at a time: single-row states are put into one batch (``stack``) and taken
    back out (``split``) around each chunk, so streams that have chunks ready at the
    same moment share each frame's tensor operations.
    """

    beam: int
    pb: torch.Tensor  # (B, beam) float64: log score of paths ending in blank
    pnb: torch.Tensor  # (B, beam) float64: ... ending in the prefix's last token
    last: torch.Tensor  # (B, beam): the prefix's last token, -1 for the empty prefix
    hashes: torch.Tensor  # (B, beam) int64: rolling hash naming the prefix
    parents: list[torch.Tensor]  # per frame, (B, beam): the slot each beam came from
    emitted: list[torch.Tensor]  # per frame, (B, beam): the token it added, or -1
    prefixes: list[tuple[int, ...]] = field(default_factory=list)
    """A live single-row state's tokens of each beam slot (see ``split``)."""

    @classmethod
    def start(cls, batch: int, beam: int, device: torch.device | str) -> PrefixBeams:
        """Every row at the empty prefix (only slot 0 counts)."""
        pb = torch.full((batch, beam), _NEG_INF, dtype=torch.float64, device=device)
        pb[:, 0] = 0.0
        return cls(
            beam,
            pb,
            torch.full_like(pb, _NEG_INF),
            torch.full((batch, beam), -1, dtype=torch.long, device=device),
            torch.zeros((batch, beam), dtype=torch.long, device=device),
            [],
            [],
            [()] * beam,
        )

    @classmethod
    def stack(cls, rows: list[PrefixBeams]) -> PrefixBeams:
        """One batch of single-row states, whatever frames each has seen: a row's
        tokens so far stay in its own ``prefixes`` (see ``split``)."""
        cat = lambda name: torch.cat([getattr(r, name) for r in rows])  # noqa: E731
        return cls(rows[0].beam, cat("pb"), cat("pnb"), cat("last"), cat("hashes"), [], [])

    def split(self, rows: list[PrefixBeams]) -> list[tuple[int, ...]]:
        """After ``advance``: hand every row's state back to its single-row state
        (``stack``'s inverse), with the frames advanced since ``stack`` folded into
        that row's ``prefixes``, and return each row's best prefix.

        A live row keeps each beam's tokens instead of the per-frame history that
        ``nbest`` backtracks: reading a segment's best after every chunk by
        backtracking cost time in proportion to the segment so far (2.7 ms a row at
        20 s), which grew every step's time as segments lengthened.
        """
        parents = torch.stack(self.parents, 1).cpu().numpy()  # (B, frames, beam)
        emitted = torch.stack(self.emitted, 1).cpu().numpy()
        best_slots = torch.logaddexp(self.pb, self.pnb).argmax(1).tolist()
        bests = []
        for row, into in enumerate(rows):
            pick = slice(row, row + 1)
            into.pb, into.pnb = self.pb[pick], self.pnb[pick]
            into.last, into.hashes = self.last[pick], self.hashes[pick]
            prefixes = into.prefixes
            for slot_parents, tokens in zip(
                parents[row].tolist(), emitted[row].tolist(), strict=True
            ):
                prefixes = [
                    prefixes[p] + (t,) if t >= 0 else prefixes[p]
                    for p, t in zip(slot_parents, tokens, strict=True)
                ]
            into.prefixes = prefixes
            bests.append(prefixes[best_slots[row]])
        return bests

    def advance(
        self, log_probs: torch.Tensor, lengths: torch.Tensor | None = None, blank_id: int = 0
    ) -> None:
        """Run the search over ``log_probs`` (B, T, V); rows past ``lengths`` keep
        their state."""
        device = log_probs.device
        batch, frames, _ = log_probs.shape
        beam = self.beam
        k = min(beam, log_probs.shape[-1])
        top_lp, top_id = log_probs.topk(k, dim=-1)  # (B, T, k)
        top_lp = top_lp.double()
        beams = torch.arange(beam, device=device)
        pb, pnb, last, hashes = self.pb, self.pnb, self.last, self.hashes
        n_cand = beam * (1 + k)
        cand_index = torch.arange(n_cand, device=device).expand(batch, -1)
        # Per-frame quantities that do not depend on the beams, for all frames at once.
        blank_top = top_id == blank_id  # (B, T, k)
        blank_lp_all = top_lp.masked_fill(~blank_top, _NEG_INF).amax(2)  # (B, T)
        ext_pb = torch.full((batch, beam * k), _NEG_INF, dtype=torch.float64, device=device)
        if lengths is None:
            shortest = frames
        else:
            lengths = lengths.to(device)
            shortest = int(lengths.min()) if batch else 0
        for t in range(frames):
            lp, ids, is_blank = top_lp[:, t], top_id[:, t], blank_top[:, t]  # (B, k)
            blank_lp = blank_lp_all[:, t]
            total = torch.logaddexp(pb, pnb)  # (B, K)
            # lp of each prefix's last token when that token is among the top-k, else -inf.
            same = ids.unsqueeze(1) == last.unsqueeze(2)  # (B, K, k)
            lp_b = lp.unsqueeze(1).expand(-1, beam, -1)
            last_lp = torch.where(same, lp_b, torch.full_like(lp_b, _NEG_INF)).amax(2)
            stay_pb = total + blank_lp.unsqueeze(1)
            stay_pnb = pnb + last_lp
            # Extensions: a repeat of the last token only extends from blank-ending paths.
            ext_pnb = torch.where(same, pb.unsqueeze(2), total.unsqueeze(2)) + lp_b
            ext_pnb = ext_pnb.masked_fill(is_blank.unsqueeze(1), _NEG_INF)
            ext_hash = hashes.unsqueeze(2) * _HASH_MUL + ids.unsqueeze(1) + 1

            # pb then pnb of every candidate, merged in one segmented log-sum-exp.
            cand_scores = torch.cat([stay_pb, ext_pb, stay_pnb, ext_pnb.flatten(1)], 1)
            cand_hash = torch.cat([hashes, ext_hash.flatten(1)], 1)  # (B, N)
            m_pb, m_pnb, score, rep = _merge_same_prefixes(cand_scores, cand_hash, cand_index)
            pick = score.topk(beam, dim=1).indices  # (B, K)
            src = rep.gather(1, pick).clamp_max(n_cand - 1)  # candidate index
            is_ext = src >= beam
            parent = torch.where(is_ext, (src - beam) // k, src)
            token = torch.where(is_ext, ids.gather(1, ((src - beam) % k).clamp_min(0)), -1)

            new_last = torch.where(is_ext, token, last.gather(1, parent))
            new_pb, new_pnb, new_hash = (
                m_pb.gather(1, pick),
                m_pnb.gather(1, pick),
                cand_hash.gather(1, src),
            )
            if lengths is not None and t >= shortest:  # rows past their length keep state
                active = (t < lengths).unsqueeze(1)
                parent = torch.where(active, parent, beams.unsqueeze(0))
                token = torch.where(active, token, -1)
                new_pb = torch.where(active, new_pb, pb)
                new_pnb = torch.where(active, new_pnb, pnb)
                new_last = torch.where(active, new_last, last)
                new_hash = torch.where(active, new_hash, hashes)
            self.parents.append(parent)
            self.emitted.append(token)
            pb, pnb, last, hashes = new_pb, new_pnb, new_last, new_hash
        self.pb, self.pnb, self.last, self.hashes = pb, pnb, last, hashes

    def nbest(self) -> list[PrefixNbest]:
        """Every row's prefixes so far, best first (the search can go on after this),
        backtracked through the frames this state advanced; a live row that ``split``
        handed back has no frames of its own, its tokens are in ``prefixes``."""
        final = torch.logaddexp(self.pb, self.pnb)
        order = final.argsort(dim=1, descending=True, stable=True)
        batch = final.shape[0]
        empty = final.new_empty((0, batch, self.beam), dtype=torch.long)
        parents = torch.stack(self.parents) if self.parents else empty
        emitted = torch.stack(self.emitted) if self.emitted else empty
        return _backtrack(parents, emitted, order, final)


def _backtrack(
    parents: torch.Tensor,
    emitted: torch.Tensor,
    order: torch.Tensor,
    final: torch.Tensor,
) -> list[PrefixNbest]:
    """Token sequences of the final beams, read from per-frame parents and tokens.

    One numpy step per frame for all rows and beams; Python touches only the tokens.
    """
    parents_np = parents.cpu().numpy()
    emitted_np = emitted.cpu().numpy()
    slots = order.cpu().numpy()
    scores = final.gather(1, order).cpu().numpy()
    frames, batch, _ = parents_np.shape
    r = np.arange(batch)[:, None]
    tokens = np.empty((frames, *slots.shape), dtype=np.int64)
    for t in range(frames - 1, -1, -1):
        tokens[t] = emitted_np[t, r, slots]
        slots = parents_np[t, r, slots]
    out = []
    for b in range(batch):
        keep = [j for j in range(slots.shape[1]) if scores[b, j] != _NEG_INF]
        hyps = []
        for j in keep:
            col = tokens[:, b, j]
            hyps.append(tuple(int(x) for x in col[col >= 0]))
        out.append(PrefixNbest(hyps, [float(scores[b, j]) for j in keep]))
    return out
