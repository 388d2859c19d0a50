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


def test_after_a_stop_inside_a_chunk_the_next_segment_decodes_from_the_stop(tiny_model, synth):
    """A segment that ends inside a chunk must neither hear nor lose what follows the
    stop: the ending segment's beams stop at the stop's frame, and the next segment
    starts there, exactly as a fresh stream fed the audio from that frame on."""
    from serve_app.live.endpointing import EndpointRules, SpeechStopped

    # Loose rules make the random model's blanks stop and start segments often.
    rules = EndpointRules(silence_duration_ms=0, word_tail_ms=120)
    audio = synth(8.0, seed=5)
    stream = LiveStream(1.0, beam_size=BEAM, device=tiny_model.device, rules=rules)
    stepper = LiveStepper(tiny_model)
    stream.push(audio)
    segment_start, replayed, compared = 0, False, 0
    while stepper.ready([stream]):
        (out,) = stepper.step([stream])
        stops = [e for e in out.events if isinstance(e, SpeechStopped)]
        assert stops == [] or out.events[-1] is stops[0], "a step ends at its first stop"
        if replayed and out.frames == stepper.chunk_size:
            fresh = LiveStream(1.0, beam_size=BEAM, device=tiny_model.device)
            fresh.push(audio[segment_start * 640 :])
            assert stepper.step([fresh])[0].tokens == out.tokens
            compared += 1
        replayed = False
        if stops:
            assert out.replay == (stepper.chunk_size - out.frames) * stepper.subsampling
            stream.new_segment(out.replay)
            segment_start, replayed = stream.endpointer.frame, out.replay > 0
    assert compared >= 3


def test_a_stream_counts_its_frames_before_computing_them():
    """Appends only keep samples; the frames are computed when a step takes a window,
    and until then the stream still says how many it has (the step loop and the
    session's backlog limit read that)."""
    stream = LiveStream(1.0, beam_size=2, device=torch.device("cpu"))
    for _ in range(10):
        stream.push(np.zeros(640, np.float32))  # 40 ms
    assert stream.pending.size(0) == 0 and stream.frames_ready == 1 + (6400 - 400) // 160
    assert stream.has_chunk(38) and not stream.has_chunk(39)
    window = stream.take_window(35, 32)
    assert window.shape == (35, 80) and stream.frames_ready == 38 - 32
