"""Per-mode search over encoder outputs that a whole sub-batch shares.

The batched decoder runs the encoder once; this module turns that output into each
row's best hypothesis for the row's decoding mode. CTC prefix beam search and
attention rescoring run batched in tensors (``prefix_search``, ``rescoring``); requests
for Rev's timestamp style, and the other modes, call wenet's own searches with per-row
``cat_embs`` laid out the way each search's decoder batch expects.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from serve_app.engine.model import ReverbModel
from serve_app.engine.options import DecodeOptions
from serve_app.engine.prefix_search import batched_ctc_prefix_beam_search
from serve_app.engine.rescoring import batched_attention_rescoring


@dataclass
class Hyp:
    """One row's best hypothesis: tokens, their CTC frame (if the search gives one)
    and per-token confidences (if it gives them)."""

    tokens: list[int]
    times: list[int] | None
    confidences: list[float] | None


@dataclass
class _Group:
    """What every search needs: the rows (``idx``, as a list and as a device tensor
    ``sel``) and the sub-batch's encoder outputs, with the rows' CTC posteriors and
    lengths already selected (``probs``, ``lens``)."""

    model: ReverbModel
    opts: DecodeOptions
    idx: list[int]
    sel: torch.Tensor
    probs: torch.Tensor
    lens: torch.Tensor
    encoder_out: torch.Tensor
    encoder_mask: torch.Tensor
    encoder_lens: torch.Tensor
    ctc_probs: torch.Tensor
    cat_embs: torch.Tensor


def search_group(
    model: ReverbModel,
    opts: DecodeOptions,
    idx: list[int],
    encoder_out: torch.Tensor,
    encoder_mask: torch.Tensor,
    encoder_lens: torch.Tensor,
    ctc_probs: torch.Tensor,
    cat_embs: torch.Tensor,
) -> list[Hyp]:
    """Each row's best hypothesis, for rows that share ``opts``' search options."""
    sel = torch.tensor(idx, device=encoder_out.device)
    if idx == list(range(idx[0], idx[0] + len(idx))):
        # Contiguous rows (always, when a sub-batch shares one search): a view, not
        # an index copy of the (B, T, vocab) posteriors (~20 MB per 20 s row).
        probs = ctc_probs[idx[0] : idx[0] + len(idx)]
        lens = encoder_lens[idx[0] : idx[0] + len(idx)]
    else:
        probs, lens = ctc_probs[sel], encoder_lens[sel]
    group = _Group(
        model, opts, idx, sel, probs, lens, encoder_out, encoder_mask, encoder_lens,
        ctc_probs, cat_embs,
    )  # fmt: skip
    key = (opts.decoding_mode, opts.word_timestamps == "rev")
    if key not in _SEARCHES:
        raise ValueError(f"unknown decoding mode {opts.decoding_mode!r}")
    return _SEARCHES[key](group)


def _greedy(g: _Group) -> list[Hyp]:
    # One max over the whole group and one device-to-host copy, not an argmax, a max
    # and two copies per row.
    scores, best = g.probs.max(-1)
    n = g.lens.tolist()
    best_rows, score_rows = best.tolist(), scores.tolist()
    return [
        _greedy_path(best_rows[k][: n[k]], score_rows[k][: n[k]], g.model.blank_id)
        for k in range(len(g.idx))
    ]


def _tensor_prefix_nbests(g: _Group) -> list:
    """Tensor search over the whole group; word times come from forced alignment."""
    return batched_ctc_prefix_beam_search(g.probs, g.lens, g.opts.beam_size, g.model.blank_id)


def _prefix_beam(g: _Group) -> list[Hyp]:
    return [Hyp(list(nb.hyps[0]) if nb.hyps else [], None, None) for nb in _tensor_prefix_nbests(g)]


def _rescoring(g: _Group) -> list[Hyp]:
    rescored = batched_attention_rescoring(
        g.model.model,
        _tensor_prefix_nbests(g),
        g.encoder_out[g.sel],
        g.lens,
        g.cat_embs[g.sel],
        g.opts.ctc_weight,
        g.opts.reverse_weight,
    )
    return [Hyp(r.tokens, None, r.confidences) for r in rescored]


def _wenet_prefix(g: _Group) -> list:
    from wenet.transformer import search

    return search.ctc_prefix_beam_search(g.probs, g.lens, g.opts.beam_size, None, g.model.blank_id)


def _rev_prefix_beam(g: _Group) -> list[Hyp]:
    """Rev's timestamp style: wenet's own search, whose token times Rev's CTM uses."""
    return [Hyp(list(r.tokens), list(r.times), None) for r in _wenet_prefix(g)]


def _rev_rescoring(g: _Group) -> list[Hyp]:
    from wenet.transformer import search

    prefix = _wenet_prefix(g)
    out = []
    for k, i in enumerate(g.idx):
        # The decoder's batch is the n-best list: expand this row's cat_emb per beam.
        beams = g.cat_embs[i : i + 1].expand(len(prefix[k].nbest), -1)
        r = search.attention_rescoring(
            g.model.model,
            [prefix[k]],
            g.encoder_out[i : i + 1],
            g.encoder_lens[i : i + 1],
            g.opts.ctc_weight,
            g.opts.reverse_weight,
            {"tasks": ["transcribe"], "langs": ["en"]},
            cat_embs=beams,
        )[0]
        out.append(Hyp(list(r.tokens), list(r.times), list(r.tokens_confidence)))
    return out


def _attention(g: _Group) -> list[Hyp]:
    from wenet.transformer import search

    # Beams are laid out row-major (B*N): repeat each row's cat_emb N times.
    n = len(g.idx)
    res = search.attention_beam_search(
        g.model.model,
        g.encoder_out[g.sel],
        g.encoder_mask[g.sel],
        g.opts.beam_size,
        g.opts.length_penalty,
        {"tasks": ["transcribe"] * n, "langs": ["en"] * n},
        cat_embs=g.cat_embs[g.sel].repeat_interleave(g.opts.beam_size, dim=0),
    )
    return [Hyp(list(r.tokens), None, None) for r in res]


def _joint_rows(g: _Group) -> list[Hyp]:
    return [
        _joint(g.model, g.opts, i, g.encoder_out, g.encoder_lens, g.ctc_probs, g.cat_embs)
        for i in g.idx
    ]


_SEARCHES: dict[tuple[str, bool], Callable[[_Group], list[Hyp]]] = {
    # (decoding mode, Rev's timestamp style?) -> search
    ("ctc_greedy_search", False): _greedy,
    ("ctc_greedy_search", True): _greedy,
    ("ctc_prefix_beam_search", False): _prefix_beam,
    ("ctc_prefix_beam_search", True): _rev_prefix_beam,
    ("attention_rescoring", False): _rescoring,
    ("attention_rescoring", True): _rev_rescoring,
    ("attention", False): _attention,
    ("attention", True): _attention,
    ("joint_decoding", False): _joint_rows,
    ("joint_decoding", True): _joint_rows,
}


def _joint(model: ReverbModel, opts, i, encoder_out, encoder_lens, ctc_probs, cat_embs) -> Hyp:
    """Rev's time-synchronous joint CTC/attention search, with the model's real sos.

    Rev's ``joint_decoding`` hardcodes ``sos=10000`` and hands the search a 2-D
    encoder output; we build the same ``BeamSearchTimeSync`` correctly.
    """
    from wenet.espnet.beam_search_timesync import BeamSearchTimeSync

    m = model
    decoder = getattr(m.model.decoder, "left_decoder", m.model.decoder)
    n = int(encoder_lens[i])
    beam = BeamSearchTimeSync(
        sos=m.sos,
        beam_size=opts.beam_size,
        ctc_probs=ctc_probs[i, :n],
        decoder=decoder,
        weights={
            "decoder": 1.0 - opts.ctc_weight,
            "ctc": opts.ctc_weight,
            "length_bonus": opts.length_penalty,
        },
        pre_beam_ratio=1.5,
    )
    hyps, _scores, starts, _ends, confs = beam(x=encoder_out[i : i + 1, :n], cat_embs=cat_embs[i])
    tokens = [int(t) for t in hyps[0][1:]]
    times = [int(t) for t in starts[0][0, 1:]]
    conf = [math.exp(float(c)) for c in confs[0][1:]]
    return Hyp(tokens, times, conf)


def _greedy_path(best: list[int], scores: list[float], blank_id: int) -> Hyp:
    """Best path (per-frame argmax ids and their scores) to tokens; each token's time
    is the frame where its run peaks."""
    tokens: list[int] = []
    times: list[int] = []
    prev = blank_id
    for t, tok in enumerate(best):
        if tok != blank_id and tok != prev:
            tokens.append(tok)
            times.append(t)
        elif tok != blank_id and tok == prev and scores[t] > scores[times[-1]]:
            times[-1] = t
        prev = tok
    return Hyp(tokens, times, None)
