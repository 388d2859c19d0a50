"""Chunk-by-chunk encoding of many live streams in one forward.

wenet's ``BaseEncoder.forward_chunk`` encodes one stream's next chunk with its
attention and convolution caches, batch 1 only. Live sessions arrive at their own
pace, so their chunks are ready at different times with different offsets and cache
lengths; a GPU wants them in one forward. :class:`BatchedChunkEncoder` is
``forward_chunk``'s loop written for a batch, with wenet's own layers unchanged:

* inputs are stacked (every row is one full chunk window);
* the attention caches are read from :class:`CacheSlots` padded to the longest row
  (one gather), and the padding is masked out of the keys; the chunk's own keys
  follow the padded caches, as the layers append them, and go back in one scatter;
* positions are per row: the absolute encoding is added at the embedding with per-row
  offsets (wenet's ``PositionalEncoding`` takes a tensor of offsets), and the
  relative one (Reverb's ``rel_pos``, whose attention has no relative shift, so its
  positions are the keys' absolute ones) is built per row for the padded key layout;
* the convolution caches are per row already (in the same slots); a new stream's is
  zeros, which is what ``forward_chunk`` pads a first chunk with;
* each row has its own ``cat_embs`` (verbatimicity), as the language-specific layers
  take them.

Only full left context is kept (a stream is cut into segments well below the
positional table's 5000 frames, and each segment starts with empty caches).
"""

from __future__ import annotations

import collections
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class EncoderStream:
    """One live stream's encoder state between chunks; its caches live in the
    stepper's :class:`CacheSlots`, in the slot it was given at its first step."""

    cat_emb: torch.Tensor
    """(2,): [verbatimicity, 1 - verbatimicity], as the batch path builds it."""
    offset: int = 0
    """Encoder frames this stream has produced (its next chunk's first position)."""
    slot: int | None = None
    """Its row in the stepper's caches; given back when the stream is dropped."""
    owner: CacheSlots | None = None
    """The caches the slot is in: another stepper's step would read another stream's."""


FRAMES_STEP = 128  # cache frames are added in steps of this (5.12 s of audio)


class CacheSlots:
    """Every live stream's attention and convolution caches in two tensors, one slot
    (row) a stream, so that a step reads all its rows' caches in one gather and
    writes the new frames back in one scatter, however many streams it holds.

    Kept per stream, the caches had to be padded into a batch row by row and cut back
    out row by row at every step: two copies and a few small operations per stream,
    which on a GPU are each a kernel launch. A slot's frames past its stream's offset
    are zeros (a slot is cleared when given out), which is what the padding was, and
    a masked key times zero stays zero. Both tensors grow (slots doubling as streams
    come, frames by ``FRAMES_STEP`` as segments lengthen) and never shrink: they hold
    the most streams a stepper ever had at once (rounded up to a power of two) times
    its longest segment, and briefly twice that while growing.
    """

    def __init__(self, encoder: torch.nn.Module, slots: int = 8, frames: int = FRAMES_STEP) -> None:
        first = encoder.encoders[0]
        attention, conv = first.self_attn, first.conv_module
        param = next(encoder.parameters())
        layers = len(encoder.encoders)
        self.att = param.new_zeros(layers, slots, attention.h, frames, 2 * attention.d_k)
        self.cnn = param.new_zeros(layers, slots, encoder.output_size(), conv.lorder)
        # Free slots. A deque, not a list under a lock: slots come back from finalizers,
        # which run on whatever thread drops a stream, even inside ``give`` on the
        # stepping thread (a garbage collection while it allocates); a lock taken there
        # again would deadlock. deque's append and pop are atomic.
        self._free = collections.deque(range(slots))

    @property
    def in_use(self) -> int:
        return self.att.size(1) - len(self._free)

    def give(self, stream: EncoderStream) -> None:
        """A cleared slot for a stream's first step. It comes back when the stream is
        dropped (a new segment, a closed session): no caller has to free it, and a
        stream still in a running step cannot lose it. Steps call this, one at a time."""
        if not self._free:
            have = self.att.size(1)
            self._grow(slots=2 * have)
            self._free.extend(range(have, 2 * have))
        slot = self._free.popleft()
        self.att[:, slot].zero_()
        self.cnn[:, slot].zero_()
        stream.slot, stream.owner = slot, self
        weakref.finalize(stream, self._free.append, slot)

    def _grow(self, *, slots: int = 0, frames: int = 0) -> None:
        layers, have, heads, length, width = self.att.shape
        slots, frames = max(slots, have), max(frames, length)
        att = self.att.new_zeros(layers, slots, heads, frames, width)
        att[:, :have, :, :length] = self.att
        cnn = self.cnn.new_zeros(layers, slots, *self.cnn.shape[2:])
        cnn[:, :have] = self.cnn
        self.att, self.cnn = att, cnn

    def read(self, slots: torch.Tensor, longest: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(layers, B, heads, longest, 2 * d_k) and (layers, B, dim, kernel - 1)."""
        return self.att[:, slots, :, :longest], self.cnn[:, slots]

    def write(
        self,
        slots: torch.Tensor,
        offsets: torch.Tensor,
        longest: int,
        att: torch.Tensor,
        cnn: torch.Tensor,
    ) -> None:
        """Each row's chunk keys and values, (layers, B, heads, chunk, 2 * d_k), at its
        offset (``longest`` is the largest), and its convolution cache."""
        chunk = att.size(3)
        if longest + chunk > self.att.size(3):
            self._grow(frames=-(-(longest + chunk) // FRAMES_STEP) * FRAMES_STEP)
        frames = offsets[:, None] + torch.arange(chunk, device=offsets.device)[None, :]
        self.att[:, slots[:, None], :, frames] = att.permute(1, 3, 0, 2, 4).to(self.att.dtype)
        self.cnn[:, slots] = cnn.to(self.cnn.dtype)


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
        self.caches = CacheSlots(encoder)

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
        cached = torch.arange(longest, device=device)
        valid = torch.cat(
            [cached[None, :] < offsets[:, None], frame_mask.new_ones(batch, chunk)], dim=1
        )
        att_mask = valid[:, None, :]  # (B, 1, keys): padding is never attended to
        # Key positions: cache slot j is frame j of the stream; chunk frame t is offset + t.
        chunk_positions = offsets[:, None] + torch.arange(chunk, device=device)[None, :]
        positions = torch.cat([cached[None, :].expand(batch, -1), chunk_positions], dim=1)
        pos_emb = F.embedding(positions * valid, self.pe) if self.relative else self.pe[None, :keys]
        for stream in streams:
            if stream.slot is None:
                self.caches.give(stream)
            elif stream.owner is not self.caches:
                raise ValueError(
                    "a stream can only be stepped by the stepper that gave it its caches"
                )
        rows = torch.tensor([s.slot for s in streams], device=device)
        att_caches, cnn_caches = self.caches.read(rows, longest)
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
            new_att.append(layer_att[:, :, longest:])  # the chunk's own keys and values
            new_cnn.append(layer_cnn)
        if enc.normalize_before:
            xs = enc.after_norm(xs)
        self.caches.write(rows, offsets, longest, torch.stack(new_att), torch.stack(new_cnn))
        for stream in streams:
            stream.offset += chunk
        return xs
