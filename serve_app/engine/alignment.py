"""Tokens + frame times → words with start, end and confidence.

Two timing styles:

* ``rev``: wenet's own ``ctc_align`` and Rev's ``adjust_model_time_offset``, called
  exactly as Rev's CLI does, so word times and CTM bytes match Rev's output.
* ``aligned``: the token sequence is force-aligned to the CTC posteriors (Viterbi),
  giving every token its span of frames and a posterior-based confidence; a word
  ends where the audio after its last token falls silent or the next word starts,
  instead of 40 ms after its CTC spike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from serve_app.wire import Word

_SPACE = "▁"


def rev_words(
    tokens: Sequence[int],
    times: Sequence[int],
    confidences: Sequence[float] | None,
    tokenizer,
    *,
    output_frame_ms: int,
    offset_ms: int,
    adjustment_ms: float,
    columns: dict[int, int] | None = None,
) -> list[Word]:
    """Rev's CLI word path for one chunk, as ``Word`` objects in absolute seconds."""
    from wenet.bin.ctc_align import adjust_model_time_offset, ctc_align

    path = ctc_align(
        list(tokens), list(times), list(confidences or []), tokenizer, output_frame_ms, offset_ms
    )
    if adjustment_ms and path:
        path = adjust_model_time_offset(path, adjustment_ms)
    return [
        Word(
            word=p["word"],
            start=p["start_time_ms"] / 1000,
            end=p["end_time_ms"] / 1000,
            confidence=min(max(float(p["confidence"]), 0.0), 1.0),
        )
        for p in path
    ]


def force_align(log_probs: np.ndarray, tokens: Sequence[int], blank_id: int) -> np.ndarray:
    """Viterbi CTC alignment: the label (token index or -1 for blank) of every frame.

    Vectorised over states so a 20 s chunk aligns in milliseconds; wenet's
    ``force_align`` loops over frames *and* states in Python.
    """
    num_frames = log_probs.shape[0]
    if not tokens:
        return np.full(num_frames, -1, dtype=np.int64)
    labels = np.full(2 * len(tokens) + 1, blank_id, dtype=np.int64)
    labels[1::2] = tokens
    num_states = labels.size
    repeats = int(np.sum(labels[3::2] == labels[1:-2:2]))
    if num_frames < len(tokens) + repeats:
        # An attention hypothesis can be longer than CTC can align: spread it evenly.
        return np.floor(np.arange(num_frames) * len(tokens) / num_frames).astype(np.int64)
    emit = log_probs[:, labels]  # (T, S)
    skip_ok = np.zeros(num_states, dtype=bool)
    skip_ok[3::2] = labels[3::2] != labels[1:-2:2]
    score = np.full(num_states, -np.inf)
    score[0] = emit[0, 0]
    score[1] = emit[0, 1]
    back = np.zeros((num_frames, num_states), dtype=np.int8)
    for t in range(1, num_frames):
        stay = score
        step = np.concatenate(([-np.inf], score[:-1]))
        skip = np.where(skip_ok, np.concatenate(([-np.inf, -np.inf], score[:-2])), -np.inf)
        stacked = np.stack([stay, step, skip])
        choice = stacked.argmax(0)
        score = stacked[choice, np.arange(num_states)] + emit[t]
        back[t] = choice
    state = num_states - 1 if score[-1] >= score[-2] else num_states - 2
    path = np.empty(num_frames, dtype=np.int64)
    for t in range(num_frames - 1, -1, -1):
        path[t] = state
        state -= int(back[t, state])
    return np.where(path % 2 == 1, path // 2, -1)


def token_spans(frame_labels: np.ndarray, num_tokens: int) -> list[tuple[int, int]]:
    """(first frame, last frame) of each token in a forced alignment."""
    spans = [(-1, -1)] * num_tokens
    for t, label in enumerate(frame_labels.tolist()):
        if label < 0:
            continue
        first, _ = spans[label]
        spans[label] = (t if first < 0 else first, t)
    return spans


def aligned_words(
    tokens: Sequence[int],
    log_probs: np.ndarray,
    frame_energy: np.ndarray,
    tokenizer,
    *,
    blank_id: int,
    output_frame_ms: int,
    offset_ms: int,
    adjustment_ms: float,
    columns: dict[int, int] | None = None,
) -> list[Word]:
    """Words from a forced alignment, with ends found in the audio, not at the spike.

    Starts are the first frame of the word's first token, shifted earlier by the
    model's timings adjustment (its output delay), never before the previous word's
    end. Ends walk forward from the word's last token while the audio stays louder
    than the chunk's silence level, stopping at the next word. Confidence is the
    geometric mean of the posteriors of the word's tokens along the alignment.

    ``columns`` maps token ids to columns of ``log_probs`` when it holds only some of
    the vocabulary (blank's and the hypothesis' columns).
    """
    tokens = list(tokens)
    if not tokens:
        return []
    cols = [columns[t] for t in tokens] if columns is not None else tokens
    blank_col = columns[blank_id] if columns is not None else blank_id
    labels = force_align(log_probs, cols, blank_col)
    spans = token_spans(labels, len(tokens))
    token_conf = [
        float(np.exp(log_probs[first : last + 1, col].max())) if first >= 0 else 0.0
        for col, (first, last) in zip(cols, spans, strict=True)
    ]
    groups = _group_tokens_into_words(tokens, tokenizer)
    silence = _silence_level(frame_energy)
    adjust_frames = adjustment_ms / output_frame_ms
    words: list[Word] = []
    prev_end = 0.0
    starts = [max(spans[g[0]][0] - adjust_frames, 0.0) for g, _ in groups]
    for i, (group, text) in enumerate(groups):
        start = max(starts[i], prev_end)
        limit = starts[i + 1] if i + 1 < len(groups) else float(len(frame_energy))
        end = max(spans[group[-1]][1] + 1 - adjust_frames, start + 1)
        while end < limit and end < len(frame_energy) and frame_energy[int(end)] > silence:
            end += 1
        end = min(max(end, start + 1), max(limit, start + 1))
        conf = math.exp(sum(math.log(max(token_conf[k], 1e-6)) for k in group) / len(group))
        words.append(
            Word(
                word=text,
                start=(offset_ms + start * output_frame_ms) / 1000,
                end=(offset_ms + end * output_frame_ms) / 1000,
                confidence=min(max(conf, 0.0), 1.0),
            )
        )
        prev_end = end
    return words


def _group_tokens_into_words(tokens: list[int], tokenizer) -> list[tuple[list[int], str]]:
    """Token indices of each word, split at word-start pieces and special tokens."""
    pieces = tokenizer.detokenize(tokens)[1]
    groups: list[tuple[list[int], str]] = []
    current: list[int] = []
    text = ""
    for k, piece in enumerate(pieces):
        special = piece.startswith("<") and piece.endswith(">")
        if current and (piece.startswith(_SPACE) or special):
            if text:
                groups.append((current, text))
            current, text = [], ""
        current.append(k)
        text += piece.replace(_SPACE, "")
        if special:
            groups.append((current, text))
            current, text = [], ""
    if current and text:
        groups.append((current, text))
    return groups


def _silence_level(frame_energy: np.ndarray) -> float:
    """Energy below which a frame counts as silence, relative to this chunk."""
    if frame_energy.size == 0:
        return 0.0
    low, high = np.percentile(frame_energy, [10, 90])
    return float(low + 0.35 * (high - low))
