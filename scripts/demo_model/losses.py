"""The training loss: wenet's CTC + attention, onset cross-entropy, guided attention.

wenet's ``ASRModel.forward`` gives CTC + attention only; the small demo model needed
two more terms to learn in one CPU stage, both from the word onsets that the assembled
utterances make exact: a frame cross-entropy at each word's onset (breaks CTC's
all-blank plateau, puts spikes where words start) and a guided cross-attention loss
(keeps the decoder in place in digit strings). They live here, apart from the loop, so
that the tests can check them on the committed model's decoder.
"""

from __future__ import annotations

from typing import Any

import torch

ATT_LOSS_TOKENS = 10
"""--att-loss-per-token: attention loss per token, scaled to a typical sentence (see
forward_with_onsets); the guided-attention loss is scaled alike."""


class CrossAttentionProbe:
    """Keeps the left-to-right decoder's cross-attention weights of each forward pass.

    wenet passes every attention matrix, after softmax and masking, through the
    module's dropout; a forward hook there reads the weights wenet computed (no second
    softmax) and leaves the saved model untouched.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.weights: list[torch.Tensor] = []
        hooked = 0
        for name, module in model.decoder.named_modules():
            if name.startswith("left_decoder.") and name.endswith(".src_attn"):
                module.dropout.register_forward_hook(self._keep)
                hooked += 1
        if not hooked:
            raise RuntimeError("no left-to-right cross-attention found in the decoder")

    def _keep(self, _module: torch.nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        self.weights.append(inputs[0])


def guided_attention_loss(
    weights: list[torch.Tensor], frames: list[torch.Tensor], text_lens: torch.Tensor
) -> torch.Tensor:
    """Share of cross-attention that falls outside each output token's own frames.

    The onset labels say where every target token starts, so the decoder can be told
    where to look: token j's window runs from its onset to the next token's (at least
    eight frames, three frames' slack each side), <eos>'s from the last onset to the
    end. Without it the small decoder found its place by content alone and skipped or
    repeated words in digit strings ("four two seven nine" as "nine nine nine"); the
    encoder output carries no absolute position (wenet's rel_pos adds none).
    Measured with --att-loss-per-token on one centred stage: attention-decoding WER
    24.4% without it, 17.4% with weight 1 (3000 steps); the share outside fell to
    0.1-0.3 on sentences but stayed 0.5-0.8 on 15-25 s utterances.
    """
    batch, _, steps, num_frames = weights[0].shape
    # Each output step's window [lo, hi); rows without guidance keep lo == hi == 0.
    lo = torch.zeros(batch, steps, dtype=torch.long)
    hi = torch.zeros(batch, steps, dtype=torch.long)
    for b, labels in enumerate(frames):
        onsets = labels[:num_frames].nonzero().squeeze(1)
        n = int(text_lens[b])
        if n == 0 or len(onsets) != n:  # a token cut off at the end: no guidance
            continue
        ends = torch.cat([onsets[1:], torch.tensor([len(labels)])])
        lo[b, :n] = (onsets - 3).clamp(min=0)
        hi[b, :n] = torch.maximum(ends, onsets + 8) + 3
        lo[b, n], hi[b, n] = onsets[-1], num_frames  # <eos>
    valid = hi > lo
    if not valid.any():
        return weights[0].new_zeros(())
    t = torch.arange(num_frames)
    inside = (t >= lo.unsqueeze(-1)) & (t < hi.unsqueeze(-1))
    outside = torch.stack([(w * ~inside.unsqueeze(1)).sum(-1).mean(1) for w in weights])
    return outside.mean(0)[valid].mean()


def onset_cross_entropy(log_probs: torch.Tensor, frames: list[torch.Tensor]) -> torch.Tensor:
    """NLL of the onset labels under the CTC posteriors, per utterance.

    Summed over frames and divided by the batch size, as wenet's CTC loss is, so that
    ``ce_weight`` weighs the two on one scale. Padding takes the ignore index, and the
    labels are fitted to the encoder's frame count in case the two ever differ.
    """
    from torch.nn.utils.rnn import pad_sequence

    num_frames = log_probs.shape[1]
    labels = pad_sequence(frames, batch_first=True, padding_value=-100)
    missing = max(0, num_frames - labels.shape[1])
    labels = torch.nn.functional.pad(labels, (0, missing), value=-100)
    labels = labels[:, :num_frames]
    return torch.nn.functional.nll_loss(
        log_probs.transpose(1, 2), labels, ignore_index=-100, reduction="sum"
    ) / len(frames)


def forward_with_onsets(
    model: torch.nn.Module,
    data: dict[str, Any],
    frames: list[torch.Tensor],
    ce_weight: float,
    probe: CrossAttentionProbe | None = None,
    *,
    att_per_token: bool = False,
    guide_weight: float = 0.0,
    chunk: int = -1,
) -> dict[str, torch.Tensor]:
    """wenet's ASRModel.forward (CTC + attention) plus the onset cross-entropy and,
    with a probe, guided cross-attention.

    ``chunk`` is the encoder's attention chunk in 40 ms frames (-1: full context), as
    wenet's dynamic chunk training draws it; the recipe draws it itself (``train``) so
    that the onset cross-entropy can be left out of chunked batches: a frame at the end
    of a chunk hears almost nothing of the word starting there (causal convolutions,
    no attention past the chunk), so CTC must be free to place the spike later, where
    the word has been heard; full-context batches keep the spikes at the onsets that
    the aligned word starts read.
    """
    cat_embs = data["cat_embs"]
    enc, mask = model.encoder(
        data["feats"],
        data["feats_lengths"],
        decoding_chunk_size=chunk,
        num_decoding_left_chunks=-1,
        cat_embs=cat_embs,
    )
    enc_lens = mask.squeeze(1).sum(1)
    text, text_lens = data["target"], data["target_lengths"]
    loss_ctc, _ = model.ctc(enc, enc_lens, text, text_lens)
    infos = {"cat_embs": cat_embs, "langs": data["langs"], "tasks": data["tasks"]}
    if probe is not None:
        probe.weights.clear()
    loss_att, acc = model._calc_att_loss(enc, mask, text, text_lens, infos)
    # wenet sums the attention loss over tokens and divides by the batch size, so a
    # batch of 15-25 s utterances weighs 5-8x a batch of sentences, and Adam's step
    # size follows the large ones. Per token (times a short sentence's length), every
    # batch counts alike. Measured on one centred stage: held-out attention-decoding
    # WER 28.5% without it (2900 steps), 24.4% with it (2700 steps).
    if att_per_token:
        tokens = float(text_lens.sum() + len(text_lens))  # with <eos>
        loss_att = loss_att * len(text_lens) / tokens * ATT_LOSS_TOKENS
    loss_ce = onset_cross_entropy(model.ctc.log_softmax(enc), frames)
    if chunk > 0:
        ce_weight = 0.0
    w = model.ctc_weight
    loss = w * loss_ctc + (1 - w) * loss_att + ce_weight * loss_ce
    guide = loss_ce.new_zeros(())
    if probe is not None:
        guide = guided_attention_loss(probe.weights, frames, text_lens)
        loss = loss + (1 - w) * guide_weight * ATT_LOSS_TOKENS * guide
    return {
        "loss": loss,
        "loss_ctc": loss_ctc,
        "loss_att": loss_att,
        "th_accuracy": acc,
        "outside": guide,
    }
