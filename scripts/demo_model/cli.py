"""Command line of the demo recipe: ``python -m scripts.demo_model <subcommand>``.

Subcommands instead of mode flags, so that each job shows only the options it reads.
Every option keeps the meaning and default it had in the single-script recipe: the
defaults are the committed model's settings, and ``train`` with no options reproduces
its recipe (same seeded draws, same order).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scripts.demo_model import recipe
from scripts.demo_model.losses import ATT_LOSS_TOKENS
from scripts.demo_model.tts import BASE_VOICES, TRAIN_VARIANTS

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "models" / "demo-live"  # what the defaults train


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand reads: the plan's seed and voices, and the threads."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", type=int, default=20240, help="seeds every draw of the recipe")
    common.add_argument("--voices", type=int, default=60, help="training voice settings")
    common.add_argument(
        "--accents", default=",".join(BASE_VOICES), help="espeak-ng voices training draws from"
    )
    common.add_argument(
        "--variants",
        default=",".join(TRAIN_VARIANTS),
        help="espeak-ng variants training draws from ('' is none)",
    )
    # Two threads gave 1.3x over one on an idle 2-core machine; on a busy one, pass
    # --threads 1 (oversubscribed threads ran several times slower there).
    common.add_argument("--threads", type=int, default=2, help="torch threads")
    return common


def add_utterances(parser: argparse.ArgumentParser) -> None:
    """The plan's size: trained on, and recorded in the test manifest."""
    parser.add_argument(
        "--utterances", type=int, default=40000, help="sentence plan (assembled on the fly)"
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The model's architecture switches; the defaults are the committed model's."""
    parser.add_argument(
        "--conv-kernel", type=int, default=15, help="encoder convolution taps (cnn_module_kernel)"
    )
    parser.add_argument(
        "--centred-conv",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="centred (non-causal) encoder convolutions, as the v1 model had (default "
        "--no-centred-conv: causal, as in Reverb, so that the model can stream); with "
        "--init-from a causal model, its k-tap kernels are widened to --conv-kernel 2k-1 "
        "without changing its output",
    )
    parser.add_argument(
        "--abs-pos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="absolute positional encoding in the encoder (abs_pos + selfattn) instead of "
        "Reverb's rel_pos (--no-abs-pos): cheaper, and gives the decoder positions to align by",
    )
    parser.add_argument("--vocab-size", type=int, default=200, help="BPE pieces asked for")


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Schedule, data mix and loss weights; the defaults are models/demo-live's."""
    parser.add_argument("--steps", type=int, default=8000, help="optimizer steps")
    parser.add_argument(
        "--max-frames", type=int, default=5000, help="padded feature frames per batch"
    )
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument(
        "--warmup", type=int, default=60, help="warmup steps (at most a fifth of --steps)"
    )
    parser.add_argument("--init-from", type=Path, default=None, help="earlier model folder")
    parser.add_argument("--stage", type=int, default=None, help="picks the pools' seed")
    parser.add_argument(
        "--long-fraction", type=float, default=0.3, help="share of 3-6 sentence utterances"
    )
    parser.add_argument(
        "--continuous-share",
        type=float,
        default=0.6,
        help="share of utterances spoken as continuous speech by espeak-ng (the rest word-joined)",
    )
    parser.add_argument(
        "--onset-delay-ms",
        type=float,
        default=160.0,
        help="onset labels this long after each word's start (40 ms frames); the "
        "calibration then moves word times back",
    )
    parser.add_argument(
        "--verbatim-share",
        type=float,
        default=0.6,
        help="share of utterances trained verbatim (fillers kept, cat_emb [1, 0]); the "
        "rest are trained non-verbatim",
    )
    parser.add_argument(
        "--filler-share",
        type=float,
        default=0.5,
        help="share of utterances with one or two fillers (um, uh) inserted; verbatim "
        "labels keep them, non-verbatim ones leave them blank",
    )
    parser.add_argument(
        "--filler-sound-share",
        type=float,
        default=0.0,
        help="share of fillers in continuous speech said with another common vowel "
        "(schwa, or a long 'er') instead of the accent's own",
    )
    parser.add_argument(
        "--digital-silence-share",
        type=float,
        default=0.15,
        help="share of utterances with exact zeros (0.1-1.5 s) before and/or after them, "
        "as a muted microphone or a padded file gives",
    )
    parser.add_argument(
        "--chunk-from-step",
        type=int,
        default=2200,
        help="first step of dynamic chunk training (-1: full context throughout)",
    )
    parser.add_argument(
        "--full-context-share",
        type=float,
        default=0.5,
        help="share of full-context batches in dynamic chunk training",
    )
    parser.add_argument(
        "--long-from-pool",
        type=int,
        default=30,
        help="first pool (about 30 steps each) with joined utterances",
    )
    parser.add_argument(
        "--att-loss-per-token",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"attention loss per token (times ATT_LOSS_TOKENS = {ATT_LOSS_TOKENS}), "
        "not per utterance",
    )
    parser.add_argument(
        "--guide-weight",
        type=float,
        default=1.0,
        help="weight of the guided cross-attention loss (0: off)",
    )
    parser.add_argument(
        "--ctc-weight",
        type=float,
        default=0.25,
        help="CTC share of the training loss; the rest is the attention decoders'",
    )


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with the three subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.demo_model",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train the demo Reverb model on English speech synthesised with "
        "espeak-ng (see models/demo/README.md).",
    )
    jobs = parser.add_subparsers(dest="command", required=True, metavar="<subcommand>")
    common = common_options()

    def subcommand(name: str, **texts: str) -> argparse.ArgumentParser:
        return jobs.add_parser(
            name,
            parents=[common],
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            **texts,
        )

    train = subcommand(
        "train",
        help="the full recipe: synthesise, train, calibrate (and --test-data)",
        description="Synthesise the lexicon, train, save the model folder, calibrate its "
        "timings adjustment and, with --test-data, write the held-out test clips.",
    )
    train.add_argument("--out", type=Path, default=DEFAULT_MODEL, help="model folder")
    train.add_argument(
        "--test-data", type=Path, default=None, help="also (re)write the test clips here"
    )
    add_utterances(train)
    add_model_options(train)
    add_training_options(train)
    train.set_defaults(run=recipe.run_train)

    test_data = subcommand(
        "test-data",
        help="only (re)write the held-out test clips; no training",
        description="Rewrite the held-out test clips and manifest.json (the folder is "
        "replaced). The texts and times depend only on --seed.",
    )
    test_data.add_argument(
        "--out", type=Path, required=True, default=argparse.SUPPRESS, help="test clip folder"
    )
    add_utterances(test_data)
    test_data.set_defaults(
        run=lambda a: recipe.run_test_data(
            a.out, a.seed, a.voices, a.utterances, recipe.voice_pool(a)
        )
    )

    calibrate = subcommand(
        "calibrate",
        help="only re-measure a trained model's timings adjustment",
        description="Re-measure the timings adjustment of the trained model in --out and "
        "write it into its config.yaml.",
    )
    calibrate.add_argument("--out", type=Path, default=DEFAULT_MODEL, help="model folder")
    calibrate.set_defaults(
        run=lambda a: recipe.run_calibrate(a.out, a.seed, a.voices, recipe.voice_pool(a))
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, check what can be checked before any work, then run the subcommand."""
    args = build_parser().parse_args(argv)
    init_from = getattr(args, "init_from", None)
    if init_from and Path(init_from).resolve() == args.out.resolve():
        raise SystemExit("--init-from must differ from --out (the .pt in --out is replaced)")
    recipe.start(args.seed, args.threads)
    args.run(args)
    return 0
