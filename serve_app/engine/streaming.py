"""Chunk-by-chunk encoding of many live streams in one forward.

wenet's ``BaseEncoder.forward_chunk`` encodes one stream's next chunk with its
attention and convolution caches, batch 1 only. Live sessions arrive at their own
pace, so their chunks are ready at different times with different offsets and cache
lengths; a GPU wants them in one forward. :class:`BatchedChunkEncoder` is
``forward_chunk``'s loop written for a batch, with wenet's own layers unchanged:

* inputs are stacked (every row is one full chunk window);
* each row's attention cache is padded to the longest, and the padding is masked out
  of the keys; the chunk's own keys follow the padded caches, as the layers append them;
* positions are per row: the absolute encoding is added at the embedding with per-row
  offsets (wenet's ``PositionalEncoding`` takes a tensor of offsets), and the
  relative one (Reverb's ``rel_pos``, whose attention has no relative shift, so its
  positions are the keys' absolute ones) is built per row for the padded key layout;
* the convolution caches are per row already; a new stream's is zeros, which is what
  ``forward_chunk`` pads a first chunk with;
* each row has its own ``cat_embs`` (verbatimicity), as the language-specific layers
  take them.

Only full left context is kept (a stream is cut into segments well below the
positional table's 5000 frames, and each segment starts with empty caches).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class EncoderStream:
    """One live stream's encoder state between chunks."""

    cat_emb: torch.Tensor
    """(2,): [verbatimicity, 1 - verbatimicity], as the batch path builds it."""
    offset: int = 0
    """Encoder frames this stream has produced (its next chunk's first position)."""
    att_cache: torch.Tensor | None = None
    """(layers, heads, offset, 2 * d_k): keys and values of every earlier frame."""
    cnn_cache: torch.Tensor | None = None
    """(layers, dim, kernel - 1): the causal convolutions' left context."""


def chunk_window(encoder: torch.nn.Module, chunk_size: int) -> tuple[int, int]:
    """(feature frames per chunk window, frames between windows) for ``chunk_size``
    encoder frames, as ``forward_chunk_by_chunk`` cuts them (windows overlap by the
    subsampling's right context)."""
    subsampling = encoder.embed.subsampling_rate
    context = encoder.embed.right_context + 1
    return (chunk_size - 1) * subsampling + context, subsampling * chunk_size


class NotStreamable(ValueError):
    """The model's encoder cannot be decoded chunk by chunk."""


def check_streamable(encoder: torch.nn.Module) -> None:
    """Refuse an encoder that chunked decoding would silently get wrong.

    A centred (``causal: false``) convolution needs frames to its right that a chunk
    does not have yet (``forward_chunk`` then pads with nothing and the output drifts
    from the trained one), and an encoder trained without chunk masks
    (``use_dynamic_chunk: false`` and no ``static_chunk_size``) never learned to work
    without its right context. Either way the partials would be nonsense; a clear error
    at start-up is better than that.
    """
    convs = [getattr(layer, "conv_module", None) for layer in encoder.encoders]
    if any(conv is not None and conv.lorder == 0 for conv in convs):
        raise NotStreamable(
            "The model's encoder convolutions are centred (causal: false in its config), "
            "so it cannot decode chunk by chunk; live transcription needs a causal, "
            "dynamic-chunk-trained model such as Reverb's."
        )
    if not (encoder.use_dynamic_chunk or encoder.static_chunk_size > 0):
        raise NotStreamable(
            "The model was trained with full context only (use_dynamic_chunk: false, "
            "no static_chunk_size); its chunked outputs would not be what it learned."
        )


class BatchedChunkEncoder:
    """One encoder step for any set of streams (see the module docstring)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        check_streamable(encoder)
        self.encoder = encoder
        # RelPositionalEncoding scales the input only; its positions go to attention.
        self.relative = type(encoder.embed.pos_enc).__name__.startswith("Rel")
        self.pe = encoder.embed.pos_enc.pe[0]

    @torch.inference_mode()
    def step(self, streams: list[EncoderStream], windows: torch.Tensor) -> torch.Tensor:
        """Encode one chunk window per stream, (B, window, mel) -> (B, chunk, dim), and
        advance every stream's offset and caches."""
        enc = self.encoder
        batch = len(streams)
        device = windows.device
        xs = enc.global_cmvn(windows) if enc.global_cmvn is not None else windows
        offsets = torch.tensor([s.offset for s in streams], device=device)
        frame_mask = torch.ones(batch, 1, xs.size(1), dtype=torch.bool, device=device)
        xs, _, _ = enc.embed(xs, frame_mask, 0 if self.relative else offsets)
        chunk = xs.size(1)
        # Full left context: a stream's cache length is its offset.
        longest = int(offsets.max())
        keys = longest + chunk
        slots = torch.arange(longest, device=device)
        valid = torch.cat(
            [slots[None, :] < offsets[:, None], frame_mask.new_ones(batch, chunk)], dim=1
        )
        att_mask = valid[:, None, :]  # (B, 1, keys): padding is never attended to
        # Key positions: cache slot j is frame j of the stream; chunk frame t is offset + t.
        chunk_positions = offsets[:, None] + torch.arange(chunk, device=device)[None, :]
        positions = torch.cat([slots[None, :].expand(batch, -1), chunk_positions], dim=1)
        pos_emb = F.embedding(positions * valid, self.pe) if self.relative else self.pe[None, :keys]
        att_caches = self._padded_att_caches(streams, longest, xs)
        cnn_caches = self._cnn_caches(streams, xs)
        cat_embs = torch.stack([s.cat_emb for s in streams]).to(device=device, dtype=xs.dtype)
        new_att, new_cnn = [], []
        for i, layer in enumerate(enc.encoders):
            xs, _, layer_att, layer_cnn = layer(
                xs,
                att_mask,
                pos_emb,
                cat_embs=cat_embs,
                att_cache=att_caches[i] if longest else torch.zeros(0, 0, 0, 0),
                cnn_cache=cnn_caches[i],
            )
            new_att.append(layer_att)
            new_cnn.append(layer_cnn)
        if enc.normalize_before:
            xs = enc.after_norm(xs)
        att = torch.stack(new_att)  # (layers, B, heads, keys, 2 * d_k)
        cnn = torch.stack(new_cnn)  # (layers, B, dim, kernel - 1)
        for b, stream in enumerate(streams):
            stream.att_cache = torch.cat(
                [att[:, b, :, : stream.offset], att[:, b, :, longest:]], dim=2
            )
            stream.cnn_cache = cnn[:, b]
            stream.offset += chunk
        return xs

    def _padded_att_caches(
        self, streams: list[EncoderStream], longest: int, like: torch.Tensor
    ) -> torch.Tensor:
        """(layers, B, heads, longest, 2 * d_k), each row's cache at its start."""
        if not longest:
            return like.new_zeros(0)
        first = next(s.att_cache for s in streams if s.att_cache is not None)
        layers, heads, _, width = first.shape
        padded = like.new_zeros(layers, len(streams), heads, longest, width)
        for b, stream in enumerate(streams):
            if stream.att_cache is not None:
                padded[:, b, :, : stream.offset] = stream.att_cache
        return padded

    def _cnn_caches(self, streams: list[EncoderStream], like: torch.Tensor) -> torch.Tensor:
        """(layers, B, dim, kernel - 1); zeros for a stream's first chunk."""
        known = next((s.cnn_cache for s in streams if s.cnn_cache is not None), None)
        if known is None:
            conv = self.encoder.encoders[0].conv_module
            layers, dim = len(self.encoder.encoders), like.size(-1)
            return like.new_zeros(layers, len(streams), dim, conv.lorder)
        zeros = torch.zeros_like(known)
        return torch.stack(
            [s.cnn_cache if s.cnn_cache is not None else zeros for s in streams], dim=1
        )
