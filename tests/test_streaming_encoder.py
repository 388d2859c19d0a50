"""The batched chunk step against wenet's own streaming and chunk-masked encoders.

Three ways to encode a stream in chunks must agree: wenet's ``forward_chunk`` (one
stream, its caches), the chunk-masked full forward that ``decode(decoding_chunk_size=16)``
uses, and :class:`BatchedChunkEncoder` stepping several streams at once with mixed
offsets, cache lengths and verbatimicity. Both positional encodings are covered: the
tiny model's ``rel_pos`` (Reverb's) and ``abs_pos`` (the demo model's).
"""

from __future__ import annotations

import copy

import pytest
import torch

from serve_app.engine.model_loader import init_args, locate_model_files, wenet_configs
from serve_app.engine.streaming import (
    BatchedChunkEncoder,
    CacheSlots,
    EncoderStream,
    NotStreamable,
    chunk_window,
)

CHUNK = 16
ATOL = 2e-5


def _encoder(tiny_model_dir, pos: str, **encoder_conf) -> torch.nn.Module:
    """The tiny model's encoder (causal, rel_pos, trained weights are random anyway),
    or the same architecture with absolute positions or other ``encoder_conf``, seeded."""
    from wenet.utils.init_model import init_model

    from serve_app.engine.model import load_model

    if pos == "rel_pos" and not encoder_conf:
        return load_model(str(tiny_model_dir), device="cpu").model.encoder
    configs = copy.deepcopy(wenet_configs(locate_model_files(tiny_model_dir)))
    if pos == "abs_pos":
        encoder_conf.update(pos_enc_layer_type="abs_pos", selfattention_layer_type="selfattn")
    configs["encoder_conf"].update(encoder_conf)
    configs["output_dim"] = 10001
    torch.manual_seed(7)
    model, _ = init_model(init_args(), configs)
    return model.eval().encoder


@pytest.fixture(scope="module", params=["rel_pos", "abs_pos"])
def encoder(request, tiny_model_dir):
    return _encoder(tiny_model_dir, request.param)


def _features(seconds: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, int(seconds * 100), 80, generator=gen) * 3 + 5


def _cat(verbatimicity: float) -> torch.Tensor:
    return torch.tensor([verbatimicity, 1 - verbatimicity])


def _windows(feats: torch.Tensor, encoder: torch.nn.Module) -> list[torch.Tensor]:
    """The full chunk windows of one utterance, as forward_chunk_by_chunk cuts them."""
    window, stride = chunk_window(encoder, CHUNK)
    return [feats[:, cur : cur + window] for cur in range(0, feats.size(1) - window + 1, stride)]


def _one_stream(encoder, feats, cat) -> torch.Tensor:
    """wenet's forward_chunk, chunk after chunk, all left context."""
    att, cnn = torch.zeros(0, 0, 0, 0), torch.zeros(0, 0, 0, 0)
    outs, offset = [], 0
    with torch.inference_mode():
        for w in _windows(feats, encoder):
            y, att, cnn = encoder.forward_chunk(w, offset, -1, att, cnn, cat_embs=cat[None])
            outs.append(y)
            offset += y.size(1)
    return torch.cat(outs, dim=1)


def _chunk_masked(encoder, feats, cat, frames: int) -> torch.Tensor:
    """The full forward with a chunk mask, as decode(decoding_chunk_size=16) runs it."""
    with torch.inference_mode():
        out, _ = encoder(
            feats,
            torch.tensor([feats.size(1)]),
            decoding_chunk_size=CHUNK,
            num_decoding_left_chunks=-1,
            cat_embs=cat[None],
        )
    return out[:, :frames]


def test_chunk_window_is_wenets():
    class Embed:
        subsampling_rate, right_context = 4, 6

    class Enc:
        embed = Embed()

    assert chunk_window(Enc(), 16) == (67, 64)
    assert chunk_window(Enc(), 8) == (35, 32)


def test_one_stream_stepped_alone_equals_forward_chunk_and_the_chunk_masked_forward(encoder):
    feats, cat = _features(4.0, 1), _cat(1.0)
    reference = _one_stream(encoder, feats, cat)
    stream = EncoderStream(cat_emb=cat)
    stepper = BatchedChunkEncoder(encoder)
    ours = torch.cat([stepper.step([stream], w) for w in _windows(feats, encoder)], dim=1)
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)
    masked = _chunk_masked(encoder, feats, cat, ours.size(1))
    torch.testing.assert_close(ours, masked, atol=1e-4, rtol=1e-4)
    assert stream.offset == ours.size(1)


def test_streams_stepped_together_with_mixed_offsets_caches_and_styles_equal_each_alone(encoder):
    """Four streams that start at different steps (so their offsets and cache lengths
    differ in every shared step), with verbatimicity 1, 0, 0.5 and 1, stepped together
    whenever they have a chunk: each equals its own forward_chunk run."""
    utterances = [
        (_features(s, seed), _cat(v))
        for s, seed, v in [(5.0, 2, 1.0), (3.2, 3, 0.0), (4.4, 4, 0.5), (2.0, 5, 1.0)]
    ]
    starts = [0, 2, 1, 4]  # the step at which each stream's first chunk arrives
    windows = [_windows(f, encoder) for f, _ in utterances]
    streams = [EncoderStream(cat_emb=c) for _, c in utterances]
    outputs: list[list[torch.Tensor]] = [[] for _ in utterances]
    stepper = BatchedChunkEncoder(encoder)
    batch_sizes = []
    for step in range(max(s + len(w) for s, w in zip(starts, windows, strict=True))):
        ready = [i for i, s in enumerate(starts) if s <= step < s + len(windows[i])]
        if not ready:
            continue
        batch = torch.cat([windows[i][step - starts[i]] for i in ready], dim=0)
        out = stepper.step([streams[i] for i in ready], batch)
        for row, i in enumerate(ready):
            outputs[i].append(out[row : row + 1])
        batch_sizes.append(len(ready))
    assert max(batch_sizes) >= 3  # the streams really shared steps
    for (feats, cat), outs in zip(utterances, outputs, strict=True):
        torch.testing.assert_close(
            torch.cat(outs, dim=1), _one_stream(encoder, feats, cat), atol=ATOL, rtol=0
        )


def test_cache_slots_grow_come_back_when_streams_are_dropped_and_carry_nothing_over(
    tiny_model_dir,
):
    """Ten streams outgrow two first slots and their segments the first 16 frames,
    and each still equals its own forward_chunk run; dropped streams give their
    slots back, and a stream given a slot that held garbage (NaN) is not touched by it,
    so nothing of one caller's stream reaches another's."""
    encoder = _encoder(tiny_model_dir, "abs_pos")
    stepper = BatchedChunkEncoder(encoder)
    stepper.caches = CacheSlots(encoder, slots=2, frames=16)  # both grow in this test
    utterances = [(_features(3.0, 10 + k), _cat(k % 2)) for k in range(10)]
    streams = [EncoderStream(cat_emb=c) for _, c in utterances]
    windows = [_windows(f, encoder) for f, _ in utterances]
    outs = [stepper.step(streams, torch.cat(ws, dim=0)) for ws in zip(*windows, strict=True)]
    for row, (feats, cat) in enumerate(utterances):
        ours = torch.cat([o[row : row + 1] for o in outs], dim=1)
        torch.testing.assert_close(ours, _one_stream(encoder, feats, cat), atol=ATOL, rtol=0)
    assert stepper.caches.in_use == 10
    assert stepper.caches.att.size(1) == 16 and stepper.caches.att.size(3) == 128
    with pytest.raises(ValueError, match="stepper that gave it"):
        BatchedChunkEncoder(encoder).step(streams[:1], windows[0][0])
    del streams
    assert stepper.caches.in_use == 0
    with torch.inference_mode():  # the caches are inference tensors once grown
        stepper.caches.att.fill_(float("nan"))
        stepper.caches.cnn.fill_(float("nan"))
    # Two new streams, the second two chunks behind: its rows past its offset are
    # read as padding while the first one is longer, so garbage left there would leak.
    pair = [(_features(5.0, 30), _cat(0.0)), (_features(2.0, 31), _cat(1.0))]
    fresh = [EncoderStream(cat_emb=c) for _, c in pair]
    first, second = (_windows(f, encoder) for f, _ in pair)
    got: list[list[torch.Tensor]] = [[], []]
    for step, window in enumerate(first):
        rows = [0] + ([1] if 2 <= step < 2 + len(second) else [])
        batch = torch.cat([window] + ([second[step - 2]] if len(rows) == 2 else []))
        out = stepper.step([fresh[r] for r in rows], batch)
        for k, r in enumerate(rows):
            got[r].append(out[k : k + 1])
    for (feats, cat), outs in zip(pair, got, strict=True):
        ours = torch.cat(outs, dim=1)
        torch.testing.assert_close(ours, _one_stream(encoder, feats, cat), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("encoder_conf", "says"),
    [({"causal": False}, "centred"), ({"use_dynamic_chunk": False}, "full context only")],
)
def test_an_encoder_that_cannot_stream_is_refused_with_the_reason(
    tiny_model_dir, encoder_conf, says
):
    with pytest.raises(NotStreamable, match=says):
        BatchedChunkEncoder(_encoder(tiny_model_dir, "abs_pos", **encoder_conf))
