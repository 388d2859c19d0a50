"""Accuracy of the committed demo model on held-out synthesised speech.

The model in models/demo and the clips in tests/data/demo come from the recipe in
scripts/demo_model/ (nothing here trains). The held-out clips use sentences
and voice variants that training never saw; every word's true start and end is in
the manifest: the word-joined clips are concatenations of trimmed single-word clips,
the continuous ones carry espeak-ng's own word events.

Tests marked ``v2_target`` are the targets of the demo model v2 (issue 18: continuous
speech, streaming). They are expected to fail against the v1 model (centred
convolutions, no continuous test clips) and are xfailed while that model is the one
under test; once a causal model with continuous clips is committed they assert plainly.
``DEMO_MODEL_DIR`` / ``DEMO_DATA_DIR`` point the whole file at another model folder and
test-data folder (a trial run), without touching the committed ones. ``make test`` runs
the file twice: on models/demo (v1, the file API's model) and with
``DEMO_MODEL_DIR=models/demo-live`` (v2, the streaming model), where the v2 targets
assert.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import statistics
from functools import cache
from pathlib import Path

import jiwer
import numpy as np
import pytest
import torch
import yaml

from scripts.demo_model import corpus, losses, model_config
from scripts.demo_model.data import ExampleStream
from scripts.demo_model.tts import Voice, VoicePool, continuous_voices
from serve_app.engine.audio import as_waveform
from serve_app.engine.options import DecodeOptions
from serve_app.engine.transcriber import Request, Transcriber

# Loads and decodes with the real demo model: minutes on 2 cores.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = Path(os.environ.get("DEMO_MODEL_DIR", ROOT / "models" / "demo"))
DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", ROOT / "tests" / "data" / "demo"))
FILLERS = {"um", "uh"}
ALL_MODES = (
    "ctc_greedy_search",
    "ctc_prefix_beam_search",
    "attention",
    "attention_rescoring",
    "joint_decoding",
)


@cache
def manifest() -> dict:
    return json.loads((DATA_DIR / "manifest.json").read_text())


def clips(kind: str) -> list[dict]:
    return [c for c in manifest()["clips"] if c["set"] == kind]


def needed(kind: str) -> list[dict]:
    """The clips of a set that a test cannot mean anything without."""
    found = clips(kind)
    assert found, f"no {kind} clips in {DATA_DIR}"
    return found


def is_v2() -> bool:
    """A streaming-capable model (causal convolutions, dynamic chunks) with the
    continuous test clips: the v2 targets apply to it."""
    conf = yaml.safe_load((MODEL_DIR / "config.yaml").read_text())["encoder_conf"]
    streaming = bool(conf.get("causal")) and bool(conf.get("use_dynamic_chunk"))
    return streaming and bool(clips("continuous")) and bool(clips("continuous_long"))


v2_target = pytest.mark.xfail(
    not is_v2(),
    reason="demo model v2 target (issue 18); the model under test is v1 (not streaming, "
    "or no continuous test clips)",
    strict=False,  # some v1 figures (say, no fillers at verbatimicity 0) pass by chance
)
not_met_by_v2 = pytest.mark.xfail(
    is_v2(),
    reason="issue 18 target not met by the committed streaming model: filler recall 86% "
    "(word-joined) / 69% (continuous) at verbatimicity 1 (models/demo-live/README.md); "
    "strict, so a model that meets it must drop this mark",
    strict=True,
)
v1_only = pytest.mark.xfail(
    is_v2(),
    reason="the v1 model's target only: issue 18 sets none for pure attention decoding, "
    "which the streaming model's small decoder does worse alone (models/demo-live/README.md)",
    strict=False,
)


@cache
def waveform(name: str) -> np.ndarray:
    return as_waveform((DATA_DIR / name).read_bytes())


@pytest.fixture(scope="module")
def demo_model():
    """The committed model, decoded on one thread (as measured in its README); the
    thread count is restored afterwards so later tests run as they would alone."""
    from serve_app.engine.model import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_model(str(MODEL_DIR), device="cpu")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def transcriber(demo_model):
    return Transcriber(demo_model)


_RESULTS: dict[tuple, list] = {}


def decode_set(transcriber, kind: str, **options) -> list:
    """Transcripts of one clip set, decoded as one batch, cached per options."""
    key = (kind, tuple(sorted(options.items())))
    needed(kind)
    if key not in _RESULTS:
        opts = DecodeOptions(**options)
        reqs = [Request(waveform(c["file"]), opts) for c in clips(kind)]
        out = transcriber.transcribe_many(reqs)
        for r in out:
            if isinstance(r, Exception):
                raise r
        _RESULTS[key] = out
    return _RESULTS[key]


def wer(refs: list[str], hyps: list[str]) -> float:
    return jiwer.wer(refs, [h if h.strip() else "<empty>" for h in hyps])


def matched_pairs(ref_words: list[str], hyp_words: list[str]) -> list[tuple[int, int]]:
    """(ref index, hyp index) of words an edit alignment leaves equal."""
    sm = difflib.SequenceMatcher(a=ref_words, b=hyp_words, autojunk=False)
    return [(b.a + k, b.b + k) for b in sm.get_matching_blocks() for k in range(b.size)]


# -- the model and data as committed ------------------------------------------------------


def test_model_directory_is_small_and_in_reverb_format(demo_model):
    files = {p.name for p in MODEL_DIR.iterdir()}
    assert {"config.yaml", "tk.model", "tk.units.txt", "global_cmvn", "README.md"} <= files
    assert sum(p.stat().st_size for p in MODEL_DIR.iterdir()) < 10 * 2**20
    config = yaml.safe_load((MODEL_DIR / "config.yaml").read_text())
    assert config["encoder"] == "conformer" and config["tokenizer"] == "rev_bpe"
    assert config["dataset_conf"]["pass_cat_emb"] is True
    assert config["dataset_conf"]["cat_emb_conf"]["emb_len"] == 2
    assert "timings_adjustment_ms" in config["serving_conf"]
    assert type(demo_model.model.decoder).__name__ == "LanguageSpecificBiTransformerDecoder"
    layers = {type(layer).__name__ for layer in demo_model.model.encoder.encoders}
    assert "LanguageSpecificConformerEncoderLayer" in layers
    units = (MODEL_DIR / "tk.units.txt").read_text().split("\n")
    assert units[0] == "<blank> 0" and units[1] == "<unk> 1"
    assert units[-2].startswith("<sos/eos> ") and demo_model.sos == len(units) - 2
    assert demo_model.timings_adjustment_ms == config["serving_conf"]["timings_adjustment_ms"]


def test_vocabulary_and_test_data():
    words = {w["word"] for c in manifest()["clips"] for w in c["words"]}
    assert len(words) >= 100, len(words)
    assert {"um", "uh"} <= words
    total = sum(p.stat().st_size for p in DATA_DIR.iterdir())
    assert total < 5 * 2**20, total
    (long_clip,) = clips("long")
    assert 100 <= long_clip["duration"] <= 150  # several 20 s chunks
    recipe = manifest()["recipe"]
    held_variants = {c["voice"].split()[0].partition("+")[2] for c in clips("heldout")}
    assert held_variants - set(recipe["training_voice_variants"]), "no unseen voice variant"


def _replayed_plan(recipe: dict) -> tuple[VoicePool, list[Voice], corpus.Plan]:
    """The recipe's seeded training plan as the manifest records it (no synthesis)."""
    pool = VoicePool(tuple(recipe["training_accents"]), tuple(recipe["training_voice_variants"]))
    voices, _, plan = corpus.training_plan(
        recipe["seed"], recipe["voices"], recipe["utterances"], pool
    )
    return pool, voices, plan


def test_heldout_sentences_were_not_trained_on():
    """Replays the recipe's seeded sentence plan (no synthesis) and checks the overlap."""
    recipe = manifest()["recipe"]
    pool, voices, plan = _replayed_plan(recipe)
    assert {v.variant for v in voices} <= set(recipe["training_voice_variants"])
    assert not {v.variant for v in continuous_voices()} & set(pool.variants)
    trained = {" ".join(clean) for _, clean, _ in plan}
    for c in clips("heldout") + clips("hard"):
        assert c["text_nonverbatim"] not in trained, c["file"]
    assert len(corpus.VOCABULARY) >= 100


def test_training_stream_keeps_fillers_only_in_verbatim_targets():
    """Verbatim targets (cat_emb [1, 0]) keep the plan's filler; non-verbatim ones drop it."""
    import sentencepiece as spm

    voice = Voice("en-us", "", 160, 50)
    rng = np.random.default_rng(0)
    plan_words = ["call", "the", "team", "at", "five"]
    lexicon = {
        (voice, w): 0.1 * rng.standard_normal(3200).astype(np.float32)
        for w in [*plan_words, *corpus.FILLERS]
    }
    sp = spm.SentencePieceProcessor(model_file=str(MODEL_DIR / "tk.model"))
    filler_ids = {sp.piece_to_id("\u2581" + f) + 1 for f in corpus.FILLERS}
    plan = [(["call", "um", "the", "team", "at", "five"], plan_words, voice)] * 16
    stream = ExampleStream(plan, lexicon, sp, seed=1, pool_size=16)
    counts = [(sum(t in filler_ids for t in e.target), e.style) for e in stream.pool(0)]
    assert {c for c, style in counts if style == [1.0, 0.0]} == {1}
    assert {c for c, style in counts if style == [0.0, 1.0]} == {0}
    assert len({tuple(style) for _, style in counts}) == 2  # both styles are trained


def test_onset_labels_move_later_by_the_delay_and_never_past_the_last_frame():
    """``--onset-delay-ms`` shifts every word's spike by whole frames, tokens kept in
    order; a word that would land past the utterance's end is cut, not wrapped."""
    import sentencepiece as spm

    from scripts.demo_model.data import Utterance, onset_labels

    sp = spm.SentencePieceProcessor(model_file=str(MODEL_DIR / "tk.model"))
    words = ["call", "the", "team"]
    times = [(0.0, 0.2), (0.4, 0.5), (0.9, 1.0)]
    utt = Utterance(words, words, np.zeros(16000, np.float32), times, Voice("en-us", "", 160, 50))
    plain = onset_labels(utt, sp, 25, verbatim=True)
    late = onset_labels(utt, sp, 25, verbatim=True, delay_frames=2)
    assert plain.nonzero().squeeze(1).tolist() == [0, 10, 22]
    assert late.nonzero().squeeze(1).tolist() == [2, 12, 24]
    assert late[[2, 12, 24]].tolist() == plain[[0, 10, 22]].tolist()
    assert onset_labels(utt, sp, 25, verbatim=True, delay_frames=3).count_nonzero() == 2


def test_digital_silence_pads_with_exact_zeros_and_moves_the_word_times_with_it():
    """The padding is outside the utterance's noise (exact zeros, as a muted microphone
    gives) and the onset labels still land on the words."""
    import random

    from scripts.demo_model.data import Utterance, pad_digital_silence

    noisy = np.full(16000, 0.25, np.float32)
    utt = Utterance(["call"], ["call"], noisy, [(0.2, 0.6)], Voice("en-us", "", 160, 50))
    padded = [pad_digital_silence(utt, random.Random(seed)) for seed in range(40)]
    for out in padded:
        lead = round(out.times[0][0] * 16000) - round(0.2 * 16000)
        assert not out.audio[:lead].any() and not out.audio[lead + 16000 :].any()
        assert np.array_equal(out.audio[lead : lead + 16000], noisy)
        assert out.times[0][1] - out.times[0][0] == pytest.approx(0.4)
    leads = [out.times[0][0] > 0.2 for out in padded]
    tails = [out.audio.size - 16000 - round((out.times[0][0] - 0.2) * 16000) > 0 for out in padded]
    assert any(leads) and not all(leads) and any(tails)
    assert all(lead or tail for lead, tail in zip(leads, tails, strict=True))


def test_widened_causal_convolution_keeps_its_output_past_the_first_frames():
    """The recipe's causal-to-centred step must not change what a stage learnt."""
    from wenet.transformer.convolution import ConvolutionModule

    torch.manual_seed(0)
    causal = ConvolutionModule(8, 5, torch.nn.SiLU(), "layer_norm", causal=True)
    centred = ConvolutionModule(8, 9, torch.nn.SiLU(), "layer_norm", causal=False)
    state = {f"conv.{k}": v for k, v in causal.state_dict().items()}
    widened = model_config.widen_causal_convs(state, 9)
    centred.load_state_dict({k.removeprefix("conv."): v for k, v in widened.items()})
    x = torch.randn(2, 40, 8)
    with torch.no_grad():
        before, _ = causal(x)
        after, _ = centred(x)
    # wenet pads a causal convolution before its pointwise layer and a centred one
    # after it, so only the first kernel-1 frames may differ.
    torch.testing.assert_close(after[:, 4:], before[:, 4:])
    assert not torch.allclose(after[:, :4], before[:, :4])
    with pytest.raises(SystemExit):
        model_config.widen_causal_convs(state, 11)


def test_guided_attention_probe_sees_the_decoder_and_scores_misplaced_attention(demo_model):
    """The recipe's guided cross-attention: the probe must read the real decoder's
    weights, and the loss must be 0 for attention on each token's own frames, high for
    attention on another token's, and skip rows whose onsets do not match the target."""
    model = copy.deepcopy(demo_model.model)
    probe = losses.CrossAttentionProbe(model)
    enc = torch.randn(2, 40, model.encoder.output_size())
    mask = torch.ones(2, 1, 40, dtype=torch.bool)
    mask[1, :, 30:] = False
    text, lens = torch.tensor([[5, 6, 7], [8, 9, -1]]), torch.tensor([3, 2])
    infos = {"cat_embs": torch.eye(2), "langs": ["en"] * 2, "tasks": ["transcribe"] * 2}
    with torch.no_grad():
        model._calc_att_loss(enc, mask, text, lens, infos)
    assert len(probe.weights) == len(model.decoder.left_decoder.decoders)
    weights = probe.weights[0]
    assert weights.shape == (2, 4, 4, 40)  # batch, heads, tokens + <eos>, frames
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 4))
    assert float(weights[1, :, :, 30:].abs().max()) == 0.0

    onsets = [2, 14, 26]
    labels = torch.zeros(40, dtype=torch.long)
    labels[onsets] = torch.tensor([5, 6, 7])
    cut = torch.zeros(30, dtype=torch.long)
    cut[3] = 8  # one onset for two tokens: this row gets no guidance
    frames = [labels, cut]

    def attending(targets: list[int]) -> list[torch.Tensor]:
        w = torch.zeros(2, 4, 4, 40)
        for j, t in enumerate(targets):
            w[:, :, j, t] = 1.0
        return [w, w]

    on_own = attending([*onsets, 30])  # <eos> looks after the last onset
    assert float(losses.guided_attention_loss(on_own, frames, lens)) == 0.0
    shifted = attending([26, 2, 2, 2])  # every token looks at another token's onset
    assert float(losses.guided_attention_loss(shifted, frames, lens)) == 1.0
    half = attending([2, 2, 2, 30])
    assert float(losses.guided_attention_loss(half, frames, lens)) == 0.5


# -- accuracy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "limit"),
    [
        ("ctc_prefix_beam_search", 0.05),
        ("attention_rescoring", 0.05),
        pytest.param("attention", 0.10, marks=v1_only),
    ],
)
def test_heldout_wer(transcriber, mode, limit):
    hyps = [t.text for t in decode_set(transcriber, "heldout", decoding_mode=mode)]
    refs = [c["text"] for c in clips("heldout")]
    value = wer(refs, hyps)
    print(f"held-out WER {mode}: {value:.2%} ({len(refs)} clips)")
    assert value <= limit


@pytest.mark.parametrize("mode", ["ctc_prefix_beam_search", "attention_rescoring"])
def test_long_form_wer(transcriber, mode):
    (clip,) = clips("long")
    (t,) = decode_set(transcriber, "long", decoding_mode=mode)
    value = wer([clip["text"]], [t.text])
    print(f"long-form WER {mode}: {value:.2%} ({clip['duration']:.0f} s)")
    assert value <= 0.08
    assert t.words[-1].end > 100  # the last chunks were decoded


def timing_errors(transcriber, kind: str) -> tuple[float, float]:
    """Median |start error| and |end error| (s) of the aligned words of one clip set."""
    starts, ends = [], []
    for clip, t in zip(clips(kind), decode_set(transcriber, kind), strict=True):
        ref = clip["words"]
        hyp = t.words
        for i, j in matched_pairs([w["word"] for w in ref], [w.word for w in hyp]):
            starts.append(hyp[j].start - ref[i]["start"])
            ends.append(hyp[j].end - ref[i]["end"])
    assert starts, f"no word of the {kind} set was recognised"
    start_err = statistics.median(abs(x) for x in starts)
    end_err = statistics.median(abs(x) for x in ends)
    print(
        f"word timing ({kind}): median |start error| {start_err * 1000:.0f} ms, "
        f"median |end error| {end_err * 1000:.0f} ms over {len(starts)} words "
        f"(signed medians {statistics.median(starts) * 1000:+.0f} / "
        f"{statistics.median(ends) * 1000:+.0f} ms)"
    )
    return start_err, end_err


@pytest.mark.parametrize("kind", ["heldout", pytest.param("continuous", marks=v2_target)])
def test_word_timings_against_known_times(transcriber, kind):
    start_err, end_err = timing_errors(transcriber, kind)
    assert start_err <= 0.080
    assert end_err <= 0.120


def test_confidence_separates_right_from_wrong_words(transcriber):
    for mode in ("attention_rescoring", "ctc_prefix_beam_search", "attention"):
        for t in decode_set(transcriber, "heldout", decoding_mode=mode):
            assert all(0.0 < w.confidence <= 1.0 for w in t.words)
    right, wrong = [], []
    for clip, t in zip(clips("hard"), decode_set(transcriber, "hard"), strict=True):
        hyp = [w.word for w in t.words]
        ok = {j for _, j in matched_pairs(clip["text"].split(), hyp)}
        for j, w in enumerate(t.words):
            assert 0.0 < w.confidence <= 1.0
            (right if j in ok else wrong).append(w.confidence)
    print(
        f"hard set: {len(right)} right words (mean confidence {np.mean(right):.3f}), "
        f"{len(wrong)} wrong (mean {np.mean(wrong):.3f})"
    )
    assert len(wrong) >= 3, "the hard set must produce errors for this test to mean something"
    assert np.mean(wrong) < np.mean(right)


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("heldout", marks=not_met_by_v2),
        pytest.param("continuous", marks=[v2_target, not_met_by_v2]),
    ],
)
def test_verbatimicity_keeps_or_drops_fillers(transcriber, kind):
    with_fillers = [c for c in clips(kind) if FILLERS & set(c["text"].split())]
    assert len(with_fillers) >= 5
    n_ref = sum(sum(w in FILLERS for w in c["text"].split()) for c in with_fillers)
    verbatim = decode_set(transcriber, kind, verbatimicity=1.0)
    clean = decode_set(transcriber, kind, verbatimicity=0.0)
    recalled = 0
    for clip, t in zip(clips(kind), verbatim, strict=True):
        ref = clip["text"].split()
        hyp = t.text.split()
        recalled += sum(ref[i] in FILLERS for i, _ in matched_pairs(ref, hyp))
    emitted = sum(sum(w in FILLERS for w in t.text.split()) for t in clean)
    recall, rate = recalled / n_ref, emitted / n_ref
    refs_clean = [c["text_nonverbatim"] for c in clips(kind)]
    clean_wer = wer(refs_clean, [t.text for t in clean])
    print(
        f"fillers ({kind}): recall {recall:.0%} at verbatimicity 1, rate {rate:.0%} at "
        f"verbatimicity 0 ({n_ref} fillers); WER against non-verbatim text at "
        f"verbatimicity 0: {clean_wer:.2%}"
    )
    assert recall >= 0.9
    assert rate <= 0.1


# -- continuous speech and streaming (demo model v2, issue 18) ---------------------------


@v2_target
def test_continuous_sets_are_unseen_sentences_in_unseen_voices():
    """Continuous clips: sentences the plan never trains on, voice variants it never uses,
    word times inside the clip and in order."""
    recipe = manifest()["recipe"]
    _pool, voices, plan = _replayed_plan(recipe)
    trained = {" ".join(clean) for _, clean, _ in plan}
    trained_voices = {(v.voice, v.variant) for v in voices}
    cont = clips("continuous") + clips("continuous_long")
    assert len(clips("continuous")) >= 20
    for c in cont:
        name, _, variant = c["voice"].split()[0].partition("+")
        assert variant not in recipe["training_voice_variants"], c["file"]
        assert (name, variant) not in trained_voices
        starts = [w["start"] for w in c["words"]]
        assert starts == sorted(starts) and c["words"][-1]["end"] <= c["duration"]
    for c in clips("continuous"):
        assert c["text_nonverbatim"] not in trained, c["file"]
    (long_clip,) = clips("continuous_long")
    assert 100 <= long_clip["duration"] <= 150
    assert len(long_clip["words"]) > 250  # about two minutes of words, no gaps between them


@v2_target
def test_model_is_causal_with_dynamic_chunks_as_reverb():
    conf = yaml.safe_load((MODEL_DIR / "config.yaml").read_text())["encoder_conf"]
    assert conf["causal"] is True and conf["use_dynamic_chunk"] is True
    assert conf["use_dynamic_left_chunk"] is False


@v2_target
def test_continuous_wer(transcriber):
    hyps = [t.text for t in decode_set(transcriber, "continuous")]
    refs = [c["text"] for c in clips("continuous")]
    value = wer(refs, hyps)
    print(f"continuous held-out WER attention_rescoring: {value:.2%} ({len(refs)} clips)")
    assert value <= 0.08


@v2_target
def test_digital_silence_around_speech_does_not_become_words(transcriber):
    """1 s of exact zeros before and after each continuous clip (a muted microphone, a
    paused stream, an editor's padding) costs at most 2 points of WER: models/demo-live
    (trained without digital silence) went from 10.2% to 21.3% on them."""
    silence = np.zeros(16000, np.float32)
    reqs = [
        Request(np.concatenate([silence, waveform(c["file"]), silence]), DecodeOptions())
        for c in clips("continuous")
    ]
    padded = [t.text for t in transcriber.transcribe_many(reqs)]
    alone = [t.text for t in decode_set(transcriber, "continuous")]
    refs = [c["text"] for c in clips("continuous")]
    print(
        f"continuous WER with 1 s of digital silence around: {wer(refs, padded):.2%} "
        f"(alone {wer(refs, alone):.2%})"
    )
    assert wer(refs, padded) <= wer(refs, alone) + 0.02


@v2_target
def test_continuous_long_form_wer(transcriber):
    (clip,) = clips("continuous_long")
    (t,) = decode_set(transcriber, "continuous_long")
    value = wer([clip["text"]], [t.text])
    print(f"continuous long-form WER attention_rescoring: {value:.2%} ({clip['duration']:.0f} s)")
    assert value <= 0.10
    assert t.words[-1].end > 100


# -- fidelity with Rev's wrapper and batch invariance --------------------------------------


@pytest.fixture(scope="module")
def rev_asr():
    from wenet.cli import reverb

    def load_int16_scale(path, normalize=False):
        wave = waveform(Path(path).name)
        return torch.from_numpy(wave * 32768.0).unsqueeze(0), 16000

    mp = pytest.MonkeyPatch()
    mp.setattr(reverb.torchaudio, "load", load_int16_scale)
    (checkpoint,) = MODEL_DIR.glob("*.pt")
    yield reverb.ReverbASR(str(MODEL_DIR / "config.yaml"), str(checkpoint))
    mp.undo()


@pytest.mark.parametrize("mode", ["ctc_prefix_beam_search", "attention_rescoring"])
def test_transcripts_equal_rev_wrapper(transcriber, rev_asr, mode):
    for verbatimicity in (1.0, 0.0):
        ours = decode_set(transcriber, "heldout", decoding_mode=mode, verbatimicity=verbatimicity)
        for clip, t in zip(clips("heldout"), ours, strict=True):
            rev = rev_asr.transcribe(
                clip["file"], mode=mode, verbatimicity=verbatimicity, format="txt"
            )
            assert t.text == rev, clip["file"]


@v2_target
@pytest.mark.parametrize("mode", ["ctc_prefix_beam_search", "attention_rescoring"])
def test_continuous_transcripts_equal_rev_wrapper(transcriber, rev_asr, mode):
    ours = decode_set(transcriber, "continuous", decoding_mode=mode)
    for clip, t in zip(clips("continuous"), ours, strict=True):
        assert t.text == rev_asr.transcribe(clip["file"], mode=mode, format="txt"), clip["file"]


@v2_target
def test_streaming_wer_chunk_16_and_8(rev_asr):
    """Chunked decoding (full left context) through Rev's own wrapper, on the continuous
    set: chunk 16 (640 ms) is the target, chunk 8 is reported."""
    refs = [c["text"] for c in needed("continuous")]
    figures = {}
    for chunk in (16, 8):
        hyps = [
            rev_asr.transcribe(
                c["file"], mode="ctc_prefix_beam_search", decoding_chunk_size=chunk, format="txt"
            )
            for c in clips("continuous")
        ]
        figures[chunk] = wer(refs, hyps)
        print(f"continuous WER ctc_prefix_beam_search, chunk {chunk}: {figures[chunk]:.2%}")
    assert figures[16] <= 0.12


@v2_target
def test_chunk_by_chunk_decoding_with_caches_equals_chunked_decoding(demo_model):
    """Streaming with attention and convolution caches (wenet's forward_chunk, one chunk
    at a time) gives the encoder output of the chunk-masked decode: causal convolutions
    and dynamic chunk training are what make this hold and mean something."""
    from serve_app.engine.features import fbank

    model = demo_model.model
    cat = torch.tensor([1.0, 0.0])
    for clip in needed("continuous")[:3]:
        x = fbank(waveform(clip["file"])).unsqueeze(0)
        with torch.inference_mode():
            masked, _ = model.encoder(
                x, torch.tensor([x.shape[1]]), decoding_chunk_size=16, cat_embs=cat
            )
            cached, _ = model.encoder.forward_chunk_by_chunk(x, 16, -1, cat_embs=cat)
            greedy = [model.ctc.log_softmax(e).argmax(-1) for e in (masked, cached)]
        torch.testing.assert_close(cached, masked, atol=1e-4, rtol=1e-4)
        assert torch.equal(greedy[0], greedy[1])


@v2_target
def test_transcripts_equal_rev_wrapper_at_chunk_16(transcriber, rev_asr):
    if "decoding_chunk_size" not in DecodeOptions.model_fields:
        pytest.skip("the engine has no decoding_chunk_size option yet (serve_app)")
    mode = "ctc_prefix_beam_search"
    ours = decode_set(transcriber, "continuous", decoding_mode=mode, decoding_chunk_size=16)
    for clip, t in zip(clips("continuous"), ours, strict=True):
        rev = rev_asr.transcribe(clip["file"], mode=mode, decoding_chunk_size=16, format="txt")
        assert t.text == rev, clip["file"]


def test_espeak_word_events_give_every_word_a_time():
    """The continuous style's word times come from espeak-ng's synthesis callback."""
    from scripts.demo_model.speech import speak

    words = [["please", "check", "the", "old", "phone", "next", "week"], ["call", "the", "team"]]
    spoken = speak(words, Voice("en-us", "f3", 175, 50))
    assert spoken.words == [w for s in words for w in s]
    starts = [a for a, _ in spoken.times]
    assert starts[0] == 0.0 and starts == sorted(starts)
    assert all(b > a for a, b in spoken.times)
    assert spoken.times[-1][1] <= len(spoken.audio) / 16000 + 1e-6
    assert 1.5 < len(spoken.audio) / 16000 < 5


def test_fillers_said_with_other_vowels_keep_their_words_and_times():
    """``--filler-sound-share`` has espeak-ng read a filler as phonemes: the audio
    changes, the labels (words, one time each) do not, and share 0 changes nothing."""
    import random

    from scripts.demo_model.data import filler_sounds
    from scripts.demo_model.speech import FILLER_SOUNDS, speak

    sentences = [["please", "uh", "check", "the", "phone"], ["um", "call", "the", "team"]]
    assert filler_sounds(sentences, random.Random(0), 0.0) == sentences
    written = filler_sounds(sentences, random.Random(0), 1.0)
    assert written[0][1] in FILLER_SOUNDS["uh"] and written[1][0] in FILLER_SOUNDS["um"]
    sounds = FILLER_SOUNDS["uh"] + FILLER_SOUNDS["um"]
    kept = [w for s in written for w in s if w not in sounds]
    assert kept == ["please", "check", "the", "phone", "call", "the", "team"]
    voice = Voice("en-us", "f3", 175, 50)
    plain, other = speak(sentences, voice), speak(sentences, voice, written)
    assert other.words == plain.words
    assert len(other.times) == len(plain.times) and all(b > a for a, b in other.times)
    assert not np.array_equal(other.audio, plain.audio)
    # a phoneme string read as letters would be spelt out: far longer than the word
    assert abs(len(other.audio) - len(plain.audio)) < 0.25 * len(plain.audio)


def test_every_mode_gives_the_same_words_alone_and_in_mixed_batches(transcriber):
    """A batch mixing all modes, both verbatimicities, short clips and the long clip."""
    names = [c["file"] for c in clips("heldout")[:4]] + [clips("long")[0]["file"]]
    requests, keys = [], []
    for k, mode in enumerate(ALL_MODES):
        for j, name in enumerate(names):
            if mode == "joint_decoding" and name == names[-1]:
                continue  # the time-synchronous search is slow on 2 minutes of audio
            v = float((j + k) % 2)
            requests.append(
                Request(waveform(name), DecodeOptions(decoding_mode=mode, verbatimicity=v))
            )
            keys.append((mode, name, v))
    mixed = transcriber.transcribe_many(requests)
    for (mode, name, v), in_batch in zip(keys, mixed, strict=True):
        alone = transcriber.transcribe(
            waveform(name), DecodeOptions(decoding_mode=mode, verbatimicity=v)
        )
        assert in_batch.text == alone.text, (mode, name, v)
    assert sum(bool(t.text) for t in mixed) >= len(mixed) // 2


def test_absolute_position_config_loads_through_the_engine(tmp_path):
    """--abs-pos swaps Reverb's rel_pos encoder attention for absolute positions; the
    folder it writes must still load through the normal path and decode in every mode."""
    from wenet.transformer.embedding import PositionalEncoding, RelPositionalEncoding

    from serve_app.engine.model import load_model

    units = len((MODEL_DIR / "tk.units.txt").read_text().splitlines())
    for name in ("global_cmvn", "tk.model", "tk.units.txt"):
        (tmp_path / name).write_bytes((MODEL_DIR / name).read_bytes())
    config = model_config.demo_config(
        units, 0.0, conv_kernel=29, causal=False, abs_pos=True, ctc_weight=0.25
    )
    torch.manual_seed(0)
    model = model_config.build_model(tmp_path, config)
    pos_enc = model.encoder.embed.pos_enc
    assert isinstance(pos_enc, PositionalEncoding)
    assert not isinstance(pos_enc, RelPositionalEncoding)
    model_config.write_config(tmp_path, config)
    torch.save(model.state_dict(), tmp_path / "reverb_demo.pt")

    loaded = load_model(str(tmp_path), device="cpu")
    assert not isinstance(loaded.model.encoder.embed.pos_enc, RelPositionalEncoding)
    audio = waveform(clips("heldout")[0]["file"])
    out = Transcriber(loaded).transcribe_many(
        [Request(audio, DecodeOptions(decoding_mode=mode)) for mode in ALL_MODES]
    )
    assert all(not isinstance(r, Exception) for r in out), out
