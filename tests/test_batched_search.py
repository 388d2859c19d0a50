"""The tensor prefix search and batched rescoring against wenet's own implementations.

They replace wenet's row-by-row Python on the default path, so they must give the same
n-best lists, scores, chosen hypotheses and confidences, alone and inside batches.
"""

from __future__ import annotations

import pytest
import torch
from wenet.transformer import search

from serve_app.engine.decoder import BatchDecoder
from serve_app.engine.prefix_search import batched_ctc_prefix_beam_search
from serve_app.engine.rescoring import batched_attention_rescoring


def posteriors(batch: int, frames: int, vocab: int, peaky: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, vocab, generator=g) * (1 + peaky)
    logits[..., 0] += 2 * peaky  # blank-heavy, like a trained CTC model
    return logits.log_softmax(-1)


@pytest.mark.parametrize("beam", [1, 4, 10])
@pytest.mark.parametrize("peaky", [0.0, 3.0])
def test_prefix_search_equals_wenet(beam, peaky):
    lp = posteriors(6, 60, 40, peaky, seed=beam)
    lens = torch.tensor([60, 1, 37, 60, 12, 45])
    ref = search.ctc_prefix_beam_search(lp, lens, beam, None, 0)
    got = batched_ctc_prefix_beam_search(lp, lens, beam, 0)
    for r, g in zip(ref, got, strict=True):
        assert g.hyps == [tuple(h) for h in r.nbest]
        assert g.scores == pytest.approx(r.nbest_scores, abs=1e-9)
    # Each row alone gives what it gave inside the batch.
    for i in range(len(lens)):
        alone = batched_ctc_prefix_beam_search(lp[i : i + 1], lens[i : i + 1], beam, 0)[0]
        assert alone.hyps == got[i].hyps


def test_prefix_search_merges_prefixes_reached_two_ways():
    """Token 1, blank, token 1 is "1 1"; without the blank it is one "1". Both
    paths into the same prefix must be log-added, as wenet does."""
    p = torch.tensor([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]]).log()
    ref = search.ctc_prefix_beam_search(p[None], torch.tensor([3]), 3, None, 0)[0]
    got = batched_ctc_prefix_beam_search(p[None], torch.tensor([3]), 3, 0)[0]
    assert got.hyps == [tuple(h) for h in ref.nbest]
    assert got.scores == pytest.approx(ref.nbest_scores, abs=1e-12)
    assert (1, 1) in got.hyps and (1,) in got.hyps


@pytest.mark.parametrize("reverse_weight", [0.0, 0.3])
def test_batched_rescoring_equals_wenet(tiny_model, synth, reverse_weight):
    m = tiny_model
    decoder = BatchDecoder(m)
    feats = [decoder.features(synth(s, seed=k)) for k, s in enumerate([1.5, 6.0, 3.2, 9.0])]
    lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.int32)
    padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    cat = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.25, 0.75]])
    with torch.inference_mode():
        enc, mask = m.model._forward_encoder(padded, lens, -1, -1, False, cat_embs=cat)
        enc_lens = mask.squeeze(1).sum(1)
        probs = m.model.ctc_logprobs(enc, 0.0, m.blank_id)
        prefix = search.ctc_prefix_beam_search(probs, enc_lens, 6, None, m.blank_id)
        ref = [
            search.attention_rescoring(
                m.model,
                [prefix[i]],
                enc[i : i + 1],
                enc_lens[i : i + 1],
                0.3,
                reverse_weight,
                {"tasks": ["transcribe"], "langs": ["en"]},
                cat_embs=cat[i : i + 1].expand(len(prefix[i].nbest), -1),
            )[0]
            for i in range(len(feats))
        ]
        nbests = batched_ctc_prefix_beam_search(probs, enc_lens, 6, m.blank_id)
        got = batched_attention_rescoring(m.model, nbests, enc, enc_lens, cat, 0.3, reverse_weight)
    assert any(len(r.tokens) > 1 for r in ref), "the tiny model should say something"
    for r, g in zip(ref, got, strict=True):
        assert g.tokens == list(r.tokens)
        assert g.confidences == pytest.approx(r.tokens_confidence, abs=1e-4)


def test_batched_rescoring_handles_an_empty_hypothesis(tiny_model, synth):
    """An n-best list may hold the empty prefix (nothing said); it scores <eos> only."""
    from serve_app.engine.prefix_search import PrefixNbest

    m = tiny_model
    feats = BatchDecoder(m).features(synth(2.0, seed=3))[None]
    cat = torch.tensor([[1.0, 0.0]])
    with torch.inference_mode():
        enc, mask = m.model._forward_encoder(
            feats, torch.tensor([feats.shape[1]], dtype=torch.int32), -1, -1, False, cat_embs=cat
        )
        enc_lens = mask.squeeze(1).sum(1)
        nbest = PrefixNbest([(), (5, 7), (5,)], [-1.0, -1.5, -2.0])
        prefix = search.DecodeResult(
            tokens=[],
            nbest=[[], [5, 7], [5]],
            nbest_scores=[-1.0, -1.5, -2.0],
            nbest_times=[[]] * 3,
        )
        ref = search.attention_rescoring(
            m.model,
            [prefix],
            enc,
            enc_lens,
            0.5,
            0.0,
            {"tasks": ["transcribe"], "langs": ["en"]},
            cat_embs=cat.expand(3, -1),
        )[0]
        (got,) = batched_attention_rescoring(m.model, [nbest], enc, enc_lens, cat, 0.5, 0.0)
    assert got.tokens == list(ref.tokens)
    assert got.confidences == pytest.approx(ref.tokens_confidence, abs=1e-4)


@pytest.mark.parametrize("beam", [1, 4])
def test_prefix_beams_advanced_chunk_by_chunk_in_changing_batches_equal_the_offline_search(beam):
    """Live streams: each row's search resumes chunk after chunk, in batches whose
    members change from chunk to chunk, and reads its best prefix at every chunk. At
    the end each row's prefixes, ordered by score, equal the offline search's n-best
    over all its frames; midway, its best equals the offline search's over the frames
    so far."""
    from serve_app.engine.prefix_search import PrefixBeams

    chunk = 8
    lp = posteriors(4, 48, 30, 3.0, seed=11)
    streams = [PrefixBeams.start(1, beam, "cpu") for _ in range(4)]
    starts = [0, 1, 3, 2]  # the step of each stream's first chunk
    chunks = 48 // chunk
    for step in range(max(starts) + chunks):
        ready = [i for i, s in enumerate(starts) if s <= step < s + chunks]
        together = PrefixBeams.stack([streams[i] for i in ready])
        frames = torch.cat([lp[i : i + 1, (step - starts[i]) * chunk :][:, :chunk] for i in ready])
        together.advance(frames)
        bests = together.split([streams[i] for i in ready])
        for row, i in enumerate(ready):
            done = (step - starts[i] + 1) * chunk
            so_far = batched_ctc_prefix_beam_search(
                lp[i : i + 1, :done], torch.tensor([done]), beam
            )
            assert bests[row] == so_far[0].best
    for i, stream in enumerate(streams):
        offline = batched_ctc_prefix_beam_search(lp[i : i + 1], torch.tensor([48]), beam)[0]
        scores = torch.logaddexp(stream.pb, stream.pnb)[0].tolist()
        ranked = sorted(
            (j for j in range(beam) if scores[j] != float("-inf")), key=lambda j: -scores[j]
        )
        assert [stream.prefixes[j] for j in ranked] == offline.hyps
        assert [scores[j] for j in ranked] == pytest.approx(offline.scores, abs=1e-9)


def test_rows_that_stop_inside_a_chunk_keep_the_prefixes_of_their_frames_only():
    """A live row whose segment ends inside a chunk advances only to its stop
    (``lengths``): what ``split`` hands back equals the offline search over the frames
    it used, while the rows beside it use the whole chunk."""
    from serve_app.engine.prefix_search import PrefixBeams

    beam, chunk = 4, 8
    lp = posteriors(3, 2 * chunk, 30, 3.0, seed=5)
    rows = [PrefixBeams.start(1, beam, "cpu") for _ in range(3)]
    together = PrefixBeams.stack(rows)
    together.advance(lp[:, :chunk])
    together.split(rows)
    lengths = torch.tensor([chunk, 5, 1])
    together = PrefixBeams.stack(rows)
    together.advance(lp[:, chunk:], lengths)
    bests = together.split(rows)
    for i, used in enumerate(lengths.tolist()):
        done = chunk + used
        offline = batched_ctc_prefix_beam_search(lp[i : i + 1, :done], torch.tensor([done]), beam)
        assert bests[i] == offline[0].best
        scores = torch.logaddexp(rows[i].pb, rows[i].pnb)[0]
        assert float(scores.max()) == pytest.approx(offline[0].scores[0], abs=1e-9)
