"""Batched decoding: invariance, packing, one forward per sub-batch, error isolation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.engine.decoder import BatchDecoder, ChunkJob
from serve_app.engine.options import DECODING_MODES, DecodeOptions
from serve_app.engine.transcriber import Request, Transcriber


def _mixed_requests(synth, count: int) -> list[Request]:
    lengths = [2.0, 7.5, 3.1, 25.0, 1.2, 11.0, 4.4, 9.9]
    verbatim = [1.0, 0.0, 0.5, 0.25]
    requests = []
    for i in range(count):
        mode = DECODING_MODES[i % len(DECODING_MODES)]
        opts = DecodeOptions(
            decoding_mode=mode,
            verbatimicity=verbatim[i % len(verbatim)],
            ctc_weight=0.9 if mode == "joint_decoding" else 0.1,
            beam_size=4 if i % 3 == 0 else 10,
            word_timestamps="rev" if i % 2 else "aligned",
        )
        seconds = lengths[i % len(lengths)] if mode != "joint_decoding" else 3.0
        requests.append(Request(synth(seconds, seed=i), opts))
    return requests


@pytest.fixture(scope="module")
def transcriber(tiny_model):
    return Transcriber(tiny_model)


def test_clip_alone_equals_clip_in_mixed_batch(transcriber, synth):
    """Every mode, verbatimicity and length gives the same words alone and batched."""
    requests = _mixed_requests(synth, 16)
    batched = transcriber.transcribe_many(requests)
    report = transcriber.last_reports[0]
    assert report.rows > 16  # the 25 s clips add second chunks
    assert report.forwards <= 4, report
    assert report.padding_efficiency >= 0.9, report
    nonempty = 0
    for request, together in zip(requests, batched, strict=True):
        alone = transcriber.transcribe(request.audio, request.options)
        assert together.text == alone.text, request.options
        assert [(w.start, w.end) for w in together.words] == [(w.start, w.end) for w in alone.words]
        assert [w.confidence for w in together.words] == pytest.approx(
            [w.confidence for w in alone.words], abs=1e-4
        )
        nonempty += bool(alone.words)
    assert nonempty >= 12, "the tiny model should emit words for most clips"


def test_chunked_and_full_context_rows_share_a_batch_and_decode_as_alone(transcriber, synth):
    """A forward has one attention mask, so rows are grouped by decoding_chunk_size."""
    requests = [
        Request(synth(s, seed=i), DecodeOptions(decoding_chunk_size=c))
        for i, (s, c) in enumerate([(4.0, -1), (6.0, 16), (3.0, 8), (5.0, 16), (2.5, -1)])
    ]
    batched = transcriber.transcribe_many(requests)
    assert transcriber.last_reports[0].forwards == 3
    for request, together in zip(requests, batched, strict=True):
        assert together.text == transcriber.transcribe(request.audio, request.options).text


def test_decoding_chunk_size_is_minus_one_or_positive():
    with pytest.raises(ValueError, match="full context"):
        DecodeOptions(decoding_chunk_size=0)


def test_verbatimicity_changes_output_within_one_batch(transcriber, synth):
    audio = synth(12.0, seed=5)
    reqs = [
        Request(audio, DecodeOptions(decoding_mode=mode, verbatimicity=v))
        for mode in ("attention", "attention_rescoring")
        for v in (0.0, 1.0)
    ]
    out = transcriber.transcribe_many(reqs)
    assert transcriber.last_reports[0].forwards == 1
    assert out[0].text != out[1].text or out[2].text != out[3].text


def test_attention_expands_cat_embs_per_beam(tiny_model, synth):
    """Rev's attention search with (B, 2) cat_embs breaks; we repeat each row per beam."""
    from wenet.transformer.search import attention_beam_search

    decoder = BatchDecoder(tiny_model)
    feats = [decoder.features(synth(s, seed=2)) for s in (3.0, 5.0)]
    lengths = torch.tensor([f.shape[0] for f in feats])
    padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    cat = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    with torch.inference_mode():
        enc, mask = tiny_model.model._forward_encoder(padded, lengths, cat_embs=cat)
        with pytest.raises(RuntimeError):
            attention_beam_search(tiny_model.model, enc, mask, 4, cat_embs=cat)
        hyps = attention_beam_search(
            tiny_model.model, enc, mask, 4, cat_embs=cat.repeat_interleave(4, dim=0)
        )
    assert len(hyps) == 2


def test_packing_respects_frame_budget_and_sorts(tiny_model, synth):
    decoder = BatchDecoder(tiny_model, max_padded_frames=2500)
    jobs = [
        ChunkJob(synth(s, seed=i), 0, DecodeOptions(decoding_mode="ctc_greedy_search"))
        for i, s in enumerate([2.0, 10.0, 3.0, 9.5, 2.2, 4.0])
    ]
    outcomes, report = decoder.decode(jobs)
    assert not any(isinstance(o, Exception) for o in outcomes)
    assert report.forwards > 1
    for sub in report.sub_batches:
        assert sub.padded_frames <= 2500 or sub.rows == 1
    assert report.padding_efficiency > 0.8
    alone = [decoder.decode([j])[0][0] for j in jobs]
    assert [o.text for o in outcomes] == [a.text for a in alone]


def test_bad_row_fails_only_itself(tiny_model, synth, monkeypatch):
    decoder = BatchDecoder(tiny_model)
    good = DecodeOptions(decoding_mode="ctc_prefix_beam_search")
    jobs = [
        ChunkJob(synth(3.0, seed=1), 0, good),
        ChunkJob(np.zeros((2, 16000), dtype=np.float32), 0, good),  # not mono: fbank fails
        ChunkJob(synth(4.0, seed=2), 0, good),
    ]
    outcomes, report = decoder.decode(jobs)
    assert isinstance(outcomes[1], Exception)
    assert not isinstance(outcomes[0], Exception) and outcomes[0].words
    assert not isinstance(outcomes[2], Exception)
    assert report.failed_rows == 1

    # A failure inside the search of one row is retried row by row.
    original = decoder._words
    poisoned = jobs[2].samples

    def flaky(row, hyp, log_probs):
        if row.job.samples is poisoned:
            raise ValueError("boom")
        return original(row, hyp, log_probs)

    monkeypatch.setattr(decoder, "_words", flaky)
    outcomes, _ = decoder.decode([jobs[0], jobs[2]])
    assert isinstance(outcomes[1], ValueError)
    assert outcomes[0].words


@pytest.mark.parametrize("where", ["encoder", "search"])
def test_a_fatal_device_error_fails_the_batch_at_once_without_retries(
    tiny_model, synth, monkeypatch, where
):
    """Pass: a device-side assert in the encoder or the search fails every row of the
    batch after one attempt: no sub-batch or row is retried (each retry would only
    meet the same dead CUDA context)."""
    decoder = BatchDecoder(tiny_model, max_padded_frames=400)  # several sub-batches
    options = DecodeOptions(decoding_mode="ctc_prefix_beam_search")
    jobs = [ChunkJob(synth(2.0 + i, seed=i), 0, options) for i in range(6)]
    calls = 0
    fatal = RuntimeError("CUDA error: device-side assert triggered")
    if where == "encoder":
        target, name = tiny_model.model, "_forward_encoder"
    else:
        import serve_app.engine.decoder as decoder_module

        target, name = decoder_module, "search_group"
    original = getattr(target, name)

    def broken(*args, **kwargs):
        nonlocal calls
        calls += 1
        raise fatal

    monkeypatch.setattr(target, name, broken)
    outcomes, report = decoder.decode(jobs)
    assert calls == 1
    assert all(outcome is fatal for outcome in outcomes)
    assert report.failed_rows == len(jobs)
    monkeypatch.setattr(target, name, original)


def test_sixteen_request_batch_forward_count(transcriber, synth):
    """The figure quoted in the closing note: forwards for a 16-request mixed batch."""
    requests = _mixed_requests(synth, 16)
    transcriber.transcribe_many(requests)
    report = transcriber.last_reports[0]
    print(
        f"16 requests -> {report.rows} chunk rows, {report.forwards} forward(s), "
        f"padding efficiency {report.padding_efficiency:.2f}"
    )
    assert report.forwards <= 4
    assert report.padding_efficiency >= 0.9
