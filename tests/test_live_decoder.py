"""Live streams stepped together equal the offline chunk-masked decode of their audio.

The reference is what ``decode(decoding_chunk_size=16)`` computes: the full forward
with a chunk mask, then CTC prefix beam search. A live stream sees the same audio
pushed in uneven pieces, shares its steps with another stream of a different
verbatimicity that started later, and must end with the same best hypothesis.
"""

from __future__ import annotations

import numpy as np
import torch

from serve_app.engine.features import fbank
from serve_app.engine.prefix_search import batched_ctc_prefix_beam_search
from serve_app.live.decoder import LiveStepper, LiveStream

BEAM = 4


def _offline_best(model, samples: np.ndarray, verbatimicity: float, frames: int):
    feats = fbank(samples[: len(samples) // 1280 * 1280])[None]
    cat = torch.tensor([[verbatimicity, 1 - verbatimicity]])
    with torch.inference_mode():
        enc, _ = model.model.encoder(
            feats,
            torch.tensor([feats.size(1)]),
            decoding_chunk_size=16,
            num_decoding_left_chunks=-1,
            cat_embs=cat,
        )
        log_probs = model.model.ctc.log_softmax(enc[:, :frames])
    return batched_ctc_prefix_beam_search(log_probs, torch.tensor([frames]), BEAM)[0].best


def test_two_streams_stepped_together_equal_their_offline_chunked_decodes(tiny_model, synth):
    audio = [synth(6.0, seed=3), synth(4.5, seed=4)]
    styles = [1.0, 0.0]
    streams = [LiveStream(v, beam_size=BEAM, device=tiny_model.device) for v in styles]
    stepper = LiveStepper(tiny_model)
    # 80 ms pieces, split unevenly in two; the second stream starts 640 ms later, so
    # both have a chunk ready at the same ticks.
    pieces = [
        [
            q
            for p in np.split(a[: len(a) // 1280 * 1280], len(a) // 1280)
            for q in np.split(p, [300])
        ]
        for a in audio
    ]
    last: list[tuple[int, ...]] = [(), ()]
    shared = 0
    for t in range(200):
        for i, stream in enumerate(streams):
            k = t - 16 * i
            if 0 <= k < len(pieces[i]):
                stream.push(pieces[i][k])
        ready = stepper.ready(streams)
        while ready:
            shared += len(ready) == 2
            for stream, out in zip(ready, stepper.step(ready), strict=True):
                last[streams.index(stream)] = out.tokens
            ready = stepper.ready(streams)
    assert shared >= 3
    for i, stream in enumerate(streams):
        assert stream.encoder.offset >= 16 * 5
        reference = _offline_best(tiny_model, audio[i], styles[i], stream.encoder.offset)
        assert last[i] == reference
