#!/usr/bin/env python3
"""Write a random-weight Reverb model in exactly the reverb_asr_v1 on-disk format.

Two sizes:

* ``tiny``: a few MB, built in seconds with a fixed seed. Tests use it for plumbing
  (loading, batching, fidelity against Rev's wrapper, formats). It keeps Reverb's
  10001-token vocabulary so ``joint_decoding`` (which hardcodes ``sos=10000`` in Rev's
  wenet) is exercised, and its output biases are set so every decoding mode emits
  non-empty, varied and terminating hypotheses.
* ``full``: Reverb's exact architecture (18 conformer blocks, d=640, 8 heads, FFN
  2048, kernel 31; 6+6 LSL decoder blocks), random weights, for benchmarks only.
  Never committed, never built by ``make test``.

The folder holds config.yaml, <name>.pt, tk.model, tk.units.txt and global_cmvn,
like the real model.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from serve_app.engine.features import kaldi_fbank

VOCAB_SIZE = 10001  # Reverb's: <blank>, <unk>, 9998 BPE pieces, <sos/eos>
NUM_MEL_BINS = 80

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "encoder": {
            "output_size": 32,
            "attention_heads": 2,
            "linear_units": 64,
            "num_blocks": 2,
            "cnn_module_kernel": 15,
        },
        "decoder": {"attention_heads": 2, "linear_units": 64, "num_blocks": 1, "r_num_blocks": 1},
    },
    "full": {
        "encoder": {
            "output_size": 640,
            "attention_heads": 8,
            "linear_units": 2048,
            "num_blocks": 18,
            "cnn_module_kernel": 31,
        },
        "decoder": {"attention_heads": 8, "linear_units": 2048, "num_blocks": 6, "r_num_blocks": 6},
    },
}


def reverb_config(size: str, *, timings_adjustment_ms: float = 230.0) -> dict[str, Any]:
    """The wenet config.yaml structure of reverb_asr_v1 with this size's dimensions."""
    enc, dec = SIZES[size]["encoder"], SIZES[size]["decoder"]
    return {
        "input_dim": NUM_MEL_BINS,
        "output_dim": VOCAB_SIZE,
        "model": "asr_model",
        "encoder": "conformer",
        "encoder_conf": {
            **enc,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "conv2d",
            "normalize_before": True,
            "use_cnn_module": True,
            "activation_type": "swish",
            "pos_enc_layer_type": "rel_pos",
            "selfattention_layer_type": "rel_selfattn",
            "causal": True,
            "use_dynamic_chunk": True,
            "use_dynamic_left_chunk": False,
            "cnn_module_norm": "layer_norm",
        },
        "decoder": "bitransformer",
        "decoder_conf": {
            **dec,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "self_attention_dropout_rate": 0.1,
            "src_attention_dropout_rate": 0.1,
        },
        "ctc": "ctc",
        "ctc_conf": {"ctc_blank_id": 0},
        "cmvn": "global_cmvn",
        "cmvn_conf": {"cmvn_file": "global_cmvn", "is_json_cmvn": True},
        "tokenizer": "rev_bpe",
        "tokenizer_conf": {
            "bpe_path": "tk.model",
            "symbol_table_path": "tk.units.txt",
            "non_lang_syms_path": None,
            "split_with_space": False,
        },
        "model_conf": {
            "ctc_weight": 0.3,
            "lsm_weight": 0.1,
            "length_normalized_loss": False,
            "reverse_weight": 0.3,
        },
        "dataset_conf": {
            "resample_conf": {"resample_rate": 16000},
            "fbank_conf": {
                "num_mel_bins": NUM_MEL_BINS,
                "frame_shift": 10,
                "frame_length": 25,
                "dither": 0.0,
            },
            "pass_cat_emb": True,
            "add_cat_emb": False,
            "cat_emb_conf": {"emb_len": 2, "one_hot_ids": {"verbatim": 0, "nonverbatim": 1}},
            "batch_conf": {"batch_type": "dynamic", "max_frames_in_batch": 20000},
        },
        # reverb-serve's own section (wenet ignores it): word-timing correction in ms.
        "serving_conf": {"timings_adjustment_ms": timings_adjustment_ms},
    }


def random_corpus(rng: random.Random, n_words: int = 60000) -> list[str]:
    """Pseudo-words with enough distinct substrings for a 9998-piece BPE vocabulary."""
    lexicon = set()
    while len(lexicon) < 20000:
        lexicon.add("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9))))
    words = sorted(lexicon)
    lines, line = [], []
    for _ in range(n_words):
        line.append(rng.choice(words))
        if len(line) >= 12:
            lines.append(" ".join(line))
            line = []
    return lines


def write_tokenizer(out: Path, rng: random.Random) -> None:
    """Train a real SentencePiece BPE model and write Reverb's unit table around it."""
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(random_corpus(rng)) + "\n")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(out / "tk"),
            model_type="bpe",
            vocab_size=VOCAB_SIZE - 2,  # spm's <unk> + 9998 pieces
            character_coverage=1.0,
            bos_id=-1,
            eos_id=-1,
            unk_id=0,
            num_threads=2,
            minloglevel=2,
        )
    sp = spm.SentencePieceProcessor(model_file=str(out / "tk.model"))
    pieces = [sp.id_to_piece(i) for i in range(1, sp.get_piece_size())]
    units = ["<blank>", "<unk>", *pieces, "<sos/eos>"]
    if len(units) != VOCAB_SIZE:
        raise SystemExit(f"tokenizer has {len(units)} units, expected {VOCAB_SIZE}")
    (out / "tk.vocab").unlink(missing_ok=True)
    (out / "tk.units.txt").write_text("".join(f"{u} {i}\n" for i, u in enumerate(units)))


def write_cmvn(out: Path, seed: int) -> None:
    """Global CMVN stats from fbank of seeded synthetic audio."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(16000 * 10) / 16000
    tone = torch.sin(2 * torch.pi * 220 * t) * 8000 + torch.randn(t.shape, generator=gen) * 800
    write_global_cmvn(out, kaldi_fbank(tone, num_mel_bins=NUM_MEL_BINS))


def write_global_cmvn(out: Path, feats: torch.Tensor) -> None:
    """out/global_cmvn: CMVN stats of (frames, bins) ``feats`` in wenet's JSON format
    (sums, not means: wenet divides)."""
    feats = feats.double()
    stats = {
        "mean_stat": feats.sum(0).tolist(),
        "var_stat": (feats**2).sum(0).tolist(),
        "frame_num": int(feats.shape[0]),
    }
    (out / "global_cmvn").write_text(json.dumps(stats))


def build_model(out: Path, config: dict[str, Any] | None = None) -> torch.nn.Module:
    """Build the wenet model from the written folder, the way the service will.

    ``config`` is the config about to be written; without it, the folder's config.yaml.
    """
    from wenet.utils.init_model import init_model

    from serve_app.engine.model_loader import init_args, read_config, resolve_config_paths

    configs = read_config(out / "config.yaml") if config is None else config
    model, _ = init_model(init_args(), resolve_config_paths(out, configs))
    return model


def speechlike_audio(seconds: float, seed: int = 0, sample_rate: int = 16000) -> np.ndarray:
    """Gliding harmonic tones in bursts with pauses, plus light noise, in [-1, 1].

    Tests feed the tiny model this kind of audio, so its biases are calibrated on it.
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    f0 = 180 + 120 * np.sin(2 * np.pi * (0.3 + 0.1 * (seed % 3)) * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3.1 * phase)
    envelope = (np.sin(2 * np.pi * (1.3 + 0.2 * (seed % 5)) * t) > -0.3).astype(np.float32)
    return (0.25 * voiced * envelope + rng.normal(0, 0.02, n)).astype(np.float32)


def calibration_audio(seed: int) -> torch.Tensor:
    """Twenty seconds of int16-scale speech-like audio from several seeds."""
    parts = [speechlike_audio(4.0, seed=seed + k) for k in range(5)]
    return torch.from_numpy(np.concatenate(parts) * 32768.0)


def shape_output_biases(model: torch.nn.Module, size: str, seed: int) -> None:
    """Make random weights produce short, varied, terminating hypotheses in every mode.

    Plain random init lets a few CTC units (those aligned with the encoder's mean
    output) win every frame and never lets <blank> win; Rev's prefix beam search then
    even loses token times. Like a trained model, we want <blank> on most frames and
    input-dependent winners elsewhere: CTC rows are made orthogonal to the mean
    encoder output and equal in norm, and the blank bias is calibrated on seeded audio
    so that about 70% of frames are blank. The attention decoders get an <eos> bias so
    their hypotheses end after a few tokens instead of running to the length cap.
    """
    _relate_language_layers(model, seed)
    feats = kaldi_fbank(calibration_audio(seed), num_mel_bins=NUM_MEL_BINS).unsqueeze(0)
    model.eval()
    with torch.no_grad():
        both = feats.expand(2, -1, -1)
        enc, _ = model._forward_encoder(
            both,
            torch.tensor([feats.shape[1]] * 2),
            cat_embs=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        )
        hidden = enc.reshape(-1, enc.shape[-1])
        mean = hidden.mean(0)
        # Remove both verbatimicity branches' mean directions so neither style is
        # all-blank or blank-free.
        basis, _ = torch.linalg.qr(enc.mean(1).T)  # (D, 2) orthonormal
        ctc = model.ctc.ctc_lo
        w = ctc.weight
        w.sub_((w @ basis) @ basis.T)
        w.div_(w.norm(dim=1, keepdim=True))
        spread = (hidden - mean) @ w.T
        w.mul_(2.0 / spread.std())
        ctc.bias.zero_()
        w[0].zero_()  # blank: a constant logit, set by its bias below
        logits = hidden @ w.T
        others = logits[:, 1:]
        # Keep <blank> inside every frame's top 9 (a trained model's blank never sinks
        # far); Rev's prefix beam search loses token times when it does.
        ninth = others.topk(9, dim=1).values[:, -1].max()
        wins = torch.quantile(others.max(dim=1).values, 0.75)
        ctc.bias[0] = torch.maximum(ninth + 0.05, wins)
        for layer in _decoder_output_layers(model):
            layer.bias.zero_()
            layer.bias[-1] = 1.0 if size == "tiny" else 6.0  # <sos/eos>
            layer.bias[0] = -20.0  # never <blank>


def _relate_language_layers(model: torch.nn.Module, seed: int) -> None:
    """Make the non-verbatim branch a perturbed copy of the verbatim one.

    Independent random branches give the two verbatimicity styles unrelated output
    statistics (one nearly all blank); a perturbed copy keeps them comparable while
    still making verbatimicity change the transcript.
    """
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("language_layers") and len(module) == 2:
                first, second = module[0], module[1]
                noise = torch.randn(first.weight.shape, generator=gen) * first.weight.std()
                second.weight.copy_(first.weight + 0.5 * noise)
                second.bias.copy_(first.bias)


def _decoder_output_layers(model: torch.nn.Module) -> list[torch.nn.Linear]:
    dec = model.decoder
    parts = [getattr(dec, "left_decoder", dec), getattr(dec, "right_decoder", None)]
    return [p.output_layer for p in parts if p is not None and getattr(p, "output_layer", None)]


def make_model(
    size: str,
    out: Path,
    *,
    seed: int = 1234,
    name: str | None = None,
    timings_adjustment_ms: float = 230.0,
) -> Path:
    """Write the complete model folder and return it."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    config = reverb_config(size, timings_adjustment_ms=timings_adjustment_ms)
    write_tokenizer(out, random.Random(seed))
    write_cmvn(out, seed)
    model = build_model(out, config)
    shape_output_biases(model, size, seed)
    with (out / "config.yaml").open("w") as fout:
        yaml.safe_dump(config, fout, sort_keys=False)
    torch.save(model.state_dict(), out / f"{name or 'reverb_' + size + '_random'}.pt")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", choices=sorted(SIZES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--timings-adjustment-ms", type=float, default=230.0)
    args = parser.parse_args(argv)
    path = make_model(
        args.size, args.out, seed=args.seed, timings_adjustment_ms=args.timings_adjustment_ms
    )
    params = sum(p.numel() for p in build_model(path).parameters())
    print(f"wrote {args.size} model to {path} ({params / 1e6:.1f}M parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
