"""The engine reproduces Rev's own ``wenet.ReverbASR`` output.

Rev's ``compute_feats`` reads audio with ``torchaudio.load(normalize=False)``, which in
torchaudio 2.9 needs torchcodec and returns [-1, 1] floats anyway; the reference here
is fed int16-scale samples the way Rev's code expects them, read from the same WAV.
"""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest
import torch

from serve_app.engine.formats import render
from serve_app.engine.options import DecodeOptions
from serve_app.engine.transcriber import Transcriber

EXACT_2051_FRAMES = 2050 * 160 + 400  # samples giving exactly one full chunk
CLIPS = {"short": 3.3, "one_chunk": EXACT_2051_FRAMES / 16000, "three_chunks": 50.0}


@pytest.fixture(scope="module")
def rev_asr(tiny_model_dir, monkeypatch_module):
    from wenet.cli import reverb

    def load_int16_scale(path, normalize=False):
        with wave.open(io.BytesIO(_WAVS[path]), "rb") as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            rate = w.getframerate()
        return torch.from_numpy(pcm.astype(np.float32)).unsqueeze(0), rate

    monkeypatch_module.setattr(reverb.torchaudio, "load", load_int16_scale)
    config = tiny_model_dir / "config.yaml"
    (checkpoint,) = tiny_model_dir.glob("*.pt")
    return reverb.ReverbASR(str(config), str(checkpoint))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


_WAVS: dict[str, bytes] = {}


@pytest.fixture(scope="module")
def clips(synth, to_wav):
    out = {}
    for i, (name, seconds) in enumerate(CLIPS.items()):
        audio = synth(seconds, seed=i)
        if name == "one_chunk":
            audio = audio[:EXACT_2051_FRAMES]
        data = to_wav(audio)
        _WAVS[f"{name}.wav"] = data
        out[name] = data
    return out


@pytest.fixture(scope="module")
def transcriber(tiny_model):
    return Transcriber(tiny_model)


@pytest.mark.parametrize("mode", ["ctc_prefix_beam_search", "attention_rescoring"])
@pytest.mark.parametrize("verbatimicity", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", list(CLIPS))
def test_text_and_ctm_equal_rev(rev_asr, transcriber, clips, clip, mode, verbatimicity):
    opts = DecodeOptions(decoding_mode=mode, verbatimicity=verbatimicity, word_timestamps="rev")
    ours = transcriber.transcribe(clips[clip], opts)
    name = f"{clip}.wav"
    rev_txt = rev_asr.transcribe(name, mode=mode, verbatimicity=verbatimicity, format="txt")
    rev_ctm = rev_asr.transcribe(name, mode=mode, verbatimicity=verbatimicity, format="ctm")
    ctm, _ = render(ours, "ctm", audio_name=name)
    assert ours.text, "the tiny model must emit words for the comparison to mean something"
    assert ours.text == rev_txt
    assert ctm == rev_ctm


@pytest.mark.parametrize("mode", ["ctc_greedy_search", "attention"])
def test_other_modes_equal_model_decode(rev_asr, transcriber, clips, mode):
    """Rev's wrapper crashes in these modes (no token times); its model.decode does not."""
    for clip in ("short", "three_chunks"):
        for verbatimicity in (0.0, 1.0):
            ours = transcriber.transcribe(
                clips[clip], DecodeOptions(decoding_mode=mode, verbatimicity=verbatimicity)
            )
            feats = rev_asr.compute_feats(f"{clip}.wav", num_mel_bins=80)
            words = []
            for batch, lengths in rev_asr.feats_batcher(feats, 2051, 1):
                hyps = rev_asr.model.decode(
                    [mode],
                    batch,
                    lengths,
                    10,
                    ctc_weight=0.1,
                    cat_embs=torch.tensor([verbatimicity, 1 - verbatimicity]),
                    infos={"tasks": ["transcribe"], "langs": ["en"]},
                )[mode]
                for hyp in hyps:
                    words += rev_asr.tokenizer.detokenize(hyp.tokens)[0].split()
            assert ours.text.split() == words
            assert all(w.end >= w.start for w in ours.words)


def test_rev_wrapper_cannot_run_joint_decoding(rev_asr, clips):
    """Why joint_decoding is checked by invariance only: Rev's own path crashes."""
    with pytest.raises(RuntimeError):
        rev_asr.transcribe("short.wav", mode="joint_decoding")


def test_joint_decoding_serves_words_with_times(transcriber, synth):
    """The tiny model's random decoder favours <eos>, so let CTC lead the joint search."""
    opts = DecodeOptions(decoding_mode="joint_decoding", ctc_weight=0.9)
    ours = transcriber.transcribe(synth(8.0, seed=1), opts)
    assert ours.words
    assert all(0 <= w.start <= w.end <= ours.duration + 0.5 for w in ours.words)


@pytest.mark.parametrize("mode", ["ctc_prefix_beam_search", "attention_rescoring"])
@pytest.mark.parametrize("chunk", [16, 8])
def test_chunked_decoding_equals_rev(rev_asr, transcriber, clips, mode, chunk):
    """``decoding_chunk_size`` (the encoder sees N-frame chunks, all left context) is
    Rev's option of that name; it also changes the output, so the mask is applied."""
    changed = False
    for clip in ("short", "three_chunks"):
        opts = DecodeOptions(decoding_mode=mode, decoding_chunk_size=chunk, word_timestamps="rev")
        ours = transcriber.transcribe(clips[clip], opts)
        rev = rev_asr.transcribe(f"{clip}.wav", mode=mode, decoding_chunk_size=chunk, format="txt")
        assert ours.text == rev
        full = transcriber.transcribe(clips[clip], DecodeOptions(decoding_mode=mode))
        changed |= full.text != ours.text
    assert changed
