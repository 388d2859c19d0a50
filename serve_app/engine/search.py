"""Per-mode search over encoder outputs that a whole sub-batch shares.

The batched decoder runs the encoder once; this module turns that output into each
row's best hypothesis for the row's decoding mode. CTC prefix beam search and
attention rescoring run batched in tensors (``prefix_search``, ``rescoring``); requests
for Rev's timestamp style, and the other modes, call wenet's own searches with per-row
``cat_embs`` laid out the way each search's decoder batch expects.
"""

from __future__ import annotations

import math
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
    from wenet.transformer import search

    m = model
    sel = torch.tensor(idx, device=encoder_out.device)
    if idx == list(range(idx[0], idx[0] + len(idx))):
        # Contiguous rows (always, when a sub-batch shares one search): a view, not
        # an index copy of the (B, T, vocab) posteriors (~20 MB per 20 s row).
        probs = ctc_probs[idx[0] : idx[0] + len(idx)]
        lens = encoder_lens[idx[0] : idx[0] + len(idx)]
    else:
        probs, lens = ctc_probs[sel], encoder_lens[sel]
    mode = opts.decoding_mode
    if mode == "ctc_greedy_search":
        # One max over the whole group and one device-to-host copy, not an argmax,
        # a max and two copies per row.
        scores, best = probs.max(-1)
        n = lens.tolist()
        best_rows, score_rows = best.tolist(), scores.tolist()
        return [
            _greedy_path(best_rows[k][: n[k]], score_rows[k][: n[k]], m.blank_id)
            for k in range(len(idx))
        ]
    if mode in ("ctc_prefix_beam_search", "attention_rescoring") and opts.word_timestamps != "rev":
        # Tensor search over the whole group; word times come from forced alignment.
        nbests = batched_ctc_prefix_beam_search(probs, lens, opts.beam_size, m.blank_id)
        if mode == "ctc_prefix_beam_search":
            return [Hyp(list(nb.hyps[0]) if nb.hyps else [], None, None) for nb in nbests]
        rescored = batched_attention_rescoring(
            m.model,
            nbests,
            encoder_out[sel],
            lens,
            cat_embs[sel],
            opts.ctc_weight,
            opts.reverse_weight,
        )
        return [Hyp(r.tokens, None, r.confidences) for r in rescored]
    # Rev's timestamp style: wenet's own searches, whose token times Rev's CTM uses.
    if mode == "ctc_prefix_beam_search":
        res = search.ctc_prefix_beam_search(probs, lens, opts.beam_size, None, m.blank_id)
        return [Hyp(list(r.tokens), list(r.times), None) for r in res]
    if mode == "attention_rescoring":
        prefix = search.ctc_prefix_beam_search(probs, lens, opts.beam_size, None, m.blank_id)
        out = []
        for k, i in enumerate(idx):
            # The decoder's batch is the n-best list: expand this row's cat_emb per beam.
            beams = cat_embs[i : i + 1].expand(len(prefix[k].nbest), -1)
            r = search.attention_rescoring(
                m.model,
                [prefix[k]],
                encoder_out[i : i + 1],
                encoder_lens[i : i + 1],
                opts.ctc_weight,
                opts.reverse_weight,
                {"tasks": ["transcribe"], "langs": ["en"]},
                cat_embs=beams,
            )[0]
            out.append(Hyp(list(r.tokens), list(r.times), list(r.tokens_confidence)))
        return out
    if mode == "attention":
        # Beams are laid out row-major (B*N): repeat each row's cat_emb N times.
        res = search.attention_beam_search(
            m.model,
            encoder_out[sel],
            encoder_mask[sel],
            opts.beam_size,
            opts.length_penalty,
            {"tasks": ["transcribe"] * len(idx), "langs": ["en"] * len(idx)},
            cat_embs=cat_embs[sel].repeat_interleave(opts.beam_size, dim=0),
        )
        return [Hyp(list(r.tokens), None, None) for r in res]
    if mode == "joint_decoding":
        return [_joint(model, opts, i, encoder_out, encoder_lens, ctc_probs, cat_embs) for i in idx]
    raise ValueError(f"unknown decoding mode {mode!r}")


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
