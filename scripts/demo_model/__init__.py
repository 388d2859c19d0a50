"""The demo Reverb model's training recipe: English speech synthesised with espeak-ng.

A seeded, reproducible recipe (CPU only, one stage on 2 cores: ``make demo-model``, see
models/demo/README.md; the defaults are the v2 recipe of issue 18: continuous speech
and a streaming-capable encoder). It lives in a
package so that each step can be read, tested and imported on its own:

1. ``corpus``: a ~130-word vocabulary (numbers, days, months, common verbs and nouns,
   function words and the fillers "um"/"uh"), a small sentence grammar, disfluencies
   (verbatim transcripts keep inserted fillers and repeated words, non-verbatim ones
   drop them) and the seeded sentence plan.
2. ``tts``: every word synthesised once per voice configuration (espeak-ng voice +
   variant, speed, pitch), resampled to 16 kHz and trimmed of leading/trailing silence.
3. ``speech`` and ``data``: utterances either word-joined (those word clips
   concatenated with random gaps) or continuous (whole sentences and multi-sentence
   texts spoken by espeak-ng in one go through its C library, word times from its word
   events), so every word's true start and end is known; assembled afresh for every
   training pool (new gaps and pauses, white noise level, gain and speed
   perturbation): no waveform repeats.
4. ``model_config``: a SentencePiece BPE model and Reverb's unit table from the
   transcripts, global CMVN from the first pool's features, and a small model with
   reverb_asr_v1's config structure (conformer encoder with language-specific layers,
   ``lslbitransformer`` decoder, cat_emb length 2, pass_cat_emb).
5. ``batches``, ``losses`` and ``train``: length-sorted batches with SpecAugment, CTC +
   attention loss plus onset cross-entropy and guided
   cross-attention, with dynamic chunk training (the encoder is causal, as Reverb's, so
   the model streams). Verbatim targets train with cat_emb [1, 0], non-verbatim ones
   with [0, 1].
6. ``evaluate``: progress WERs while training and the timings calibration after it.
7. ``testdata``: the held-out test clips (word-joined and continuous) and their manifest.

``recipe`` runs those steps in the order that keeps the seeded draws, and ``cli`` gives
them subcommands::

    python -m scripts.demo_model train --out models/demo --test-data tests/data/demo
    python -m scripts.demo_model test-data --out tests/data/demo
    python -m scripts.demo_model calibrate --out models/demo

espeak-ng must be installed (``make demo-model`` installs it with apt-get when missing).
"""
