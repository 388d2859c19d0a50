"""The recipe's three jobs (train, test-data, calibrate), step by step.

Each job replays the same seeded plan, so the order of the steps here is part of the
recipe: the global seeds are set before anything draws, the model is initialised
after the tokenizer and CMVN exist, and the test data is built from the lexicon the
model was trained with. ``cli`` only parses arguments and calls these.
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from scripts.demo_model.corpus import VOCABULARY, Plan, heldout_sentences, training_plan
from scripts.demo_model.data import ExampleStream
from scripts.demo_model.evaluate import calibrate_timings, recalibrate, validation_sets
from scripts.demo_model.model_config import (
    build_model,
    count_units,
    demo_config,
    widen_causal_convs,
    write_cmvn,
    write_config,
    write_tokenizer,
)
from scripts.demo_model.speech import FILLER_SOUNDS
from scripts.demo_model.testdata import build_test_data
from scripts.demo_model.train import keep_freed_memory, train
from scripts.demo_model.tts import (
    Lexicon,
    VoicePool,
    hard_voices,
    heldout_voices,
    require_espeak,
    synthesise_lexicon,
    train_voices,
)


def start(seed: int, threads: int) -> None:
    """What every job does first: espeak-ng present, threads and allocator set, seeds."""
    require_espeak()
    torch.set_num_threads(threads)
    keep_freed_memory()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def manifest_recipe(seed: int, n_voices: int, n_utterances: int, pool: VoicePool) -> dict[str, Any]:
    """The settings the test manifest records, so tests can replay the plan."""
    return {
        "seed": seed,
        "voices": n_voices,
        "utterances": n_utterances,
        "training_accents": list(pool.accents),
        "training_voice_variants": list(pool.variants),
    }


def run_test_data(out: Path, seed: int, n_voices: int, n_utterances: int, pool: VoicePool) -> None:
    """(Re)write only the test clips: the held-out sentences need no training plan."""
    lexicon = synthesise_lexicon(heldout_voices() + hard_voices(), VOCABULARY, jobs=2)
    recipe = manifest_recipe(seed, n_voices, n_utterances, pool)
    build_test_data(out, heldout_sentences(seed), lexicon, recipe)


def run_calibrate(out: Path, seed: int, n_voices: int, pool: VoicePool) -> None:
    """Re-measure a trained folder's timings adjustment in the first training voices."""
    voices = train_voices(random.Random(seed), n_voices, pool)  # as training_plan draws them
    lexicon = synthesise_lexicon(voices[:6], VOCABULARY, jobs=2)
    recalibrate(out, lexicon, voices, seed)


def prepare_folder(out: Path, plan: Plan, vocab_size: int) -> Any:
    """Empty the model folder of weights (README.md stays) and write the tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.pt"):
        stale.unlink()
    texts = [" ".join(v) for v, _, _ in plan] + [" ".join(c) for _, c, _ in plan]
    return write_tokenizer(out, texts, vocab_size)


def training_stream(
    args: argparse.Namespace, plan: Plan, lexicon: Lexicon, sp: Any
) -> ExampleStream:
    """The stage's example stream: each stage draws different pools from one plan.

    Stage 2 by default with --init-from; pass --stage 3 and up for further
    continuations. A continuation has joined utterances from its first pool.
    """
    stage = args.stage or (2 if args.init_from else 1)
    return ExampleStream(
        plan,
        lexicon,
        sp,
        args.seed + 1000 * (stage - 1),
        long_fraction=args.long_fraction,
        long_from_pool=0 if args.init_from else args.long_from_pool,
        continuous_share=args.continuous_share,
        onset_delay_frames=round(args.onset_delay_ms / 40),
        verbatim_share=args.verbatim_share,
        digital_silence_share=args.digital_silence_share,
        filler_sound_share=args.filler_sound_share,
    )


def feature_stats(out: Path, stream: ExampleStream, init_from: Path | None) -> torch.Tensor:
    """Write global_cmvn and return the SpecAugment fill, both from the first pool.

    A continuation keeps the earlier stage's CMVN file: its checkpoint carries that
    stage's CMVN, and the file must stay in step with it.
    """
    first = stream.pool(0)
    if init_from:
        shutil.copy(Path(init_from) / "global_cmvn", out / "global_cmvn")
    else:
        write_cmvn(out, [e.feats for e in first])
    return torch.cat([e.feats for e in first]).mean(0)


def initial_model(out: Path, config: dict[str, Any], args: argparse.Namespace) -> torch.nn.Module:
    """A fresh model, or with --init-from an earlier run's weights (a further stage)."""
    model = build_model(out, config)
    if args.init_from:
        (checkpoint,) = Path(args.init_from).glob("*.pt")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        earlier = yaml.safe_load((Path(args.init_from) / "config.yaml").read_text())
        if earlier["encoder_conf"].get("causal") and args.centred_conv:
            state = widen_causal_convs(state, args.conv_kernel)
        model.load_state_dict({k: v.float() for k, v in state.items()})
    return model


def save_model(out: Path, config: dict[str, Any], model: torch.nn.Module) -> None:
    """config.yaml and the weights in half precision (the folder stays a few MB)."""
    write_config(out, config)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, out / "reverb_demo.pt")


def voice_pool(args: argparse.Namespace) -> VoicePool:
    """The training voice pool the command line asks for."""
    return VoicePool(tuple(args.accents.split(",")), tuple(args.variants.split(",")))


def run_train(args: argparse.Namespace) -> None:
    """The full recipe: synthesise, train, save, calibrate, and the test data if asked."""
    t_start = time.time()
    settings = {k: v for k, v in vars(args).items() if k not in ("run", "command")}
    print("settings: " + " ".join(f"{k}={v}" for k, v in settings.items()), flush=True)
    pool = voice_pool(args)
    voices, test_sentences, plan = training_plan(
        args.seed, args.voices, args.utterances, pool, filler_share=args.filler_share
    )
    lexicon = synthesise_lexicon(voices + heldout_voices() + hard_voices(), VOCABULARY, jobs=2)
    if args.filler_sound_share > 0:
        sounds = [s for alternatives in FILLER_SOUNDS.values() for s in alternatives]
        lexicon |= synthesise_lexicon(voices, sounds, jobs=2)
    print(f"synthesised {len(lexicon)} word clips in {time.time() - t_start:.0f}s", flush=True)
    out: Path = args.out
    sp = prepare_folder(out, plan, args.vocab_size)
    num_units = count_units(out)
    stream = training_stream(args, plan, lexicon, sp)
    fill = feature_stats(out, stream, args.init_from)
    validation = validation_sets(stream, test_sentences, voices, args.seed)
    print(f"{num_units} units; features ready at {time.time() - t_start:.0f}s", flush=True)

    config = demo_config(
        num_units,
        timings_adjustment_ms=0.0,
        conv_kernel=args.conv_kernel,
        causal=not args.centred_conv,
        abs_pos=args.abs_pos,
        ctc_weight=args.ctc_weight,
    )
    model = initial_model(out, config, args)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.2f}M parameters", flush=True)
    train(
        model,
        stream,
        steps=args.steps,
        seed=args.seed,
        max_frames=args.max_frames,
        peak_lr=args.lr,
        warmup=min(args.warmup, args.steps // 5),
        fill=fill,
        validation=validation,
        att_per_token=args.att_loss_per_token,
        guide_weight=args.guide_weight,
        chunk_from=None if args.chunk_from_step < 0 else args.chunk_from_step,
        full_context_share=args.full_context_share,
    )
    save_model(out, config, model)
    print(f"trained in {time.time() - t_start:.0f}s; wrote {out}", flush=True)
    config["serving_conf"]["timings_adjustment_ms"] = calibrate_timings(
        out, lexicon, voices, args.seed
    )
    write_config(out, config)
    if args.test_data:
        recipe = manifest_recipe(args.seed, args.voices, args.utterances, pool)
        build_test_data(args.test_data, test_sentences, lexicon, recipe)
