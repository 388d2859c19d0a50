"""The demo model's files: config, tokenizer, CMVN, and the wenet model they build.

The config starts from make_test_model's ``reverb_config`` (reverb_asr_v1's structure)
so that the demo folder loads through exactly the path a real Reverb model takes;
only sizes, positions, convolutions and loss weights are the recipe's own. The model is
built with the engine's ``init_args`` and ``resolve_config_paths``, the same way the
loader builds it when serving.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from scripts import make_test_model

ENCODER = {
    "output_size": 112,
    "attention_heads": 4,
    "linear_units": 448,
    "num_blocks": 4,
}  # cnn_module_kernel and causal come from --conv-kernel / --centred-conv
DECODER = {"attention_heads": 4, "linear_units": 448, "num_blocks": 2, "r_num_blocks": 1}


def demo_config(
    num_units: int,
    timings_adjustment_ms: float,
    conv_kernel: int,
    causal: bool,
    abs_pos: bool,
    ctc_weight: float,
) -> dict[str, Any]:
    """reverb_asr_v1's config structure at the demo model's size and settings."""
    config = make_test_model.reverb_config("tiny", timings_adjustment_ms=timings_adjustment_ms)
    config["output_dim"] = num_units
    config["encoder_conf"].update(ENCODER)
    config["encoder_conf"].update(cnn_module_kernel=conv_kernel, causal=causal)
    if abs_pos:
        # wenet's rel_pos attention has no relative shift, so with it the encoder output
        # carries no usable position and the small decoder loses its place by content
        # (it jumps to a later "forty" when it should read "five").
        config["encoder_conf"].update(
            pos_enc_layer_type="abs_pos", selfattention_layer_type="selfattn"
        )
    config["decoder_conf"].update(DECODER)
    config["model_conf"]["ctc_weight"] = ctc_weight
    # Every training utterance is assembled afresh, so there is nothing to overfit:
    # dropout only slowed learning (and its random masks were 13% of a CPU step).
    for conf in (config["encoder_conf"], config["decoder_conf"]):
        for key in conf:
            if key.endswith("dropout_rate"):
                conf[key] = 0.0
    return config


def widen_causal_convs(state: dict[str, torch.Tensor], kernel: int) -> dict[str, torch.Tensor]:
    """Turn a causal model's depthwise convolutions into centred ones of ``kernel`` taps.

    A causal kernel of k taps covers frames t-k+1..t; a centred kernel of 2k-1 taps
    covers t-k+1..t+k-1. Putting the old taps in the left half and zeros in the right
    keeps the model's function except on the first k-1 frames of an utterance (wenet
    pads a causal convolution before its pointwise layer, a centred one after it), and
    further training can then use the right context. Why it matters: with causal
    convolutions a frame sees no audio after itself except through self-attention,
    which cannot tell near frames from far ones (wenet's ``rel_pos`` has no relative
    shift). Labelled at word onsets, the small model then guessed each word's rest from
    the whole chunk's content, and in long chunks blended words ("fourfty", "meetney").
    """
    out = {}
    for name, value in state.items():
        if name.endswith("depthwise_conv.weight") and value.shape[-1] < kernel:
            taps = value.shape[-1]
            if kernel != 2 * taps - 1:
                raise SystemExit(f"cannot widen {taps}-tap causal convolutions to {kernel}")
            value = torch.nn.functional.pad(value, (0, kernel - taps))
        out[name] = value
    return out


def build_model(out: Path, config: dict[str, Any]) -> torch.nn.Module:
    """A freshly initialised wenet model for ``config``, its files read from ``out``.

    ``out`` must already hold the CMVN and tokenizer files (wenet opens them while
    building); their paths are pinned the way the engine's loader pins them.
    """
    from wenet.utils.init_model import init_model

    from serve_app.engine.model_loader import init_args, resolve_config_paths

    model, _ = init_model(init_args(), resolve_config_paths(out, config))
    return model


def write_config(out: Path, config: dict[str, Any]) -> None:
    """config.yaml in the key order of the dict (reverb_asr_v1's, for readers)."""
    with (out / "config.yaml").open("w") as fout:
        yaml.safe_dump(config, fout, sort_keys=False)


def write_tokenizer(out: Path, sentences: list[str], vocab_size: int) -> Any:
    """SentencePiece BPE on the transcripts, and Reverb's unit table around it."""
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(sentences) + "\n")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(out / "tk"),
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=1.0,
            bos_id=-1,
            eos_id=-1,
            unk_id=0,
            num_threads=1,
            hard_vocab_limit=False,
            minloglevel=2,
        )
    sp = spm.SentencePieceProcessor(model_file=str(out / "tk.model"))
    pieces = [sp.id_to_piece(i) for i in range(1, sp.get_piece_size())]
    units = ["<blank>", "<unk>", *pieces, "<sos/eos>"]
    (out / "tk.vocab").unlink(missing_ok=True)
    (out / "tk.units.txt").write_text("".join(f"{u} {i}\n" for i, u in enumerate(units)))
    return sp


def count_units(out: Path) -> int:
    """Rows of the unit table ``write_tokenizer`` wrote: the model's output size."""
    units = (out / "tk.units.txt").read_text().split("\n")
    return len([u for u in units if u])


def write_cmvn(out: Path, feats: list[torch.Tensor]) -> None:
    """Global CMVN stats in wenet's JSON format (sums, not means: wenet divides)."""
    allf = torch.cat(feats).double()
    stats = {
        "mean_stat": allf.sum(0).tolist(),
        "var_stat": (allf**2).sum(0).tolist(),
        "frame_num": int(allf.shape[0]),
    }
    (out / "global_cmvn").write_text(json.dumps(stats))
