"""Decode chunk jobs from many independent requests in as few forwards as possible.

A batch arrives with rows that differ in length, verbatimicity and decoding options.
Rows are sorted by length and packed into sub-batches under a padded-frame budget;
each sub-batch runs the encoder once with per-row ``cat_embs`` of shape (B, 2). The
CTC posteriors are computed once per blank penalty, and each group of rows that
shares search options runs its own search on just its rows. A failure is retried row
by row so that one bad row fails only its own job.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from serve_app.engine.alignment import aligned_words, force_align, rev_words, token_spans
from serve_app.engine.features import fbank
from serve_app.engine.model import ReverbModel
from serve_app.engine.packing import pack_cuts
from serve_app.engine.search import Hyp, search_group
from serve_app.wire import ChunkJob, ChunkResult

log = logging.getLogger(__name__)

MIN_FEATURE_FRAMES = 7  # conv2d subsampling yields no output frame below this
DEFAULT_MAX_PADDED_FRAMES = 2051 * 16
DEFAULT_FORWARD_COST_FRAMES = 1000  # fixed cost of one forward, in padded-frame units


@dataclass
class SubBatch:
    """What one encoder forward saw."""

    rows: int
    real_frames: int
    padded_frames: int


@dataclass
class BatchReport:
    """Per-batch accounting: rows, forwards and padding, for metrics and benchmarks."""

    rows: int = 0
    failed_rows: int = 0
    sub_batches: list[SubBatch] = field(default_factory=list)

    @property
    def forwards(self) -> int:
        return len(self.sub_batches)

    @property
    def real_frames(self) -> int:
        return sum(s.real_frames for s in self.sub_batches)

    @property
    def padded_frames(self) -> int:
        return sum(s.padded_frames for s in self.sub_batches)

    @property
    def padding_efficiency(self) -> float:
        return self.real_frames / self.padded_frames if self.padded_frames else 1.0


@dataclass
class _Row:
    index: int
    job: ChunkJob
    feats: torch.Tensor


Outcome = ChunkResult | Exception


class BatchDecoder:
    """Runs batches of chunk jobs through one loaded Reverb model."""

    def __init__(
        self,
        model: ReverbModel,
        *,
        max_padded_frames: int | None = None,
        forward_cost_frames: int = DEFAULT_FORWARD_COST_FRAMES,
    ) -> None:
        """``max_padded_frames`` None means the default budget (a config leaves it unset)."""
        self.model = model
        self.max_padded_frames = max_padded_frames or DEFAULT_MAX_PADDED_FRAMES
        self.forward_cost_frames = forward_cost_frames

    # -- public -----------------------------------------------------------------------

    def decode(self, jobs: Sequence[ChunkJob]) -> tuple[list[Outcome], BatchReport]:
        """Decode every job; outcomes are in the order of ``jobs``."""
        report = BatchReport(rows=len(jobs))
        outcomes: list[Outcome | None] = [None] * len(jobs)
        rows: list[_Row] = []
        for index, job in enumerate(jobs):
            try:
                feats = self.features(job.samples)
            except Exception as exc:  # one bad row must not fail the batch
                outcomes[index] = exc
                continue
            if feats.shape[0] < MIN_FEATURE_FRAMES:
                outcomes[index] = ChunkResult(words=[], tokens=[])
            else:
                rows.append(_Row(index, job, feats))
        try:
            for sub in self.pack(rows):
                self._decode_sub_batch(sub, outcomes, report)
        except Exception as exc:  # fatal: every row not yet decoded fails with it, at once
            log.error("device error, failing the batch's %d undecoded rows: %r", len(rows), exc)
            for row in rows:
                if outcomes[row.index] is None:
                    outcomes[row.index] = exc
        report.failed_rows = sum(isinstance(o, Exception) for o in outcomes)
        return [o if o is not None else RuntimeError("row not decoded") for o in outcomes], report

    def features(self, samples: np.ndarray) -> torch.Tensor:
        """Kaldi fbank of one chunk on the model's device, exactly as Rev's ``compute_feats``."""
        m = self.model
        return fbank(
            samples,
            num_mel_bins=m.num_mel_bins,
            frame_length_ms=m.frame_length_ms,
            frame_shift_ms=m.frame_shift_ms,
            device=m.device,
        )

    def pack(self, rows: list[_Row]) -> list[list[_Row]]:
        """Rows grouped by ``decoding_chunk_size`` (a forward has one attention mask),
        each group length-sorted (longest first) and cut into sub-batches by
        :func:`pack_cuts`.

        One 20 s chunk therefore does not make fifteen 2 s clips pad to 20 s, and short
        rows still share one forward.
        """
        by_chunking: dict[int, list[_Row]] = defaultdict(list)  # one encoder mask per forward
        for row in rows:
            by_chunking[row.job.options.decoding_chunk_size].append(row)
        subs = []
        for group in by_chunking.values():
            ordered = sorted(group, key=lambda r: r.feats.shape[0], reverse=True)
            lengths = [r.feats.shape[0] for r in ordered]
            cuts = pack_cuts(lengths, self.max_padded_frames, self.forward_cost_frames)
            subs += [ordered[c.start : c.stop] for c in cuts]
        return subs

    # -- internals --------------------------------------------------------------------

    def _decode_sub_batch(
        self, rows: list[_Row], outcomes: list[Outcome | None], report: BatchReport
    ) -> None:
        try:
            results = self._run(rows, report)
        except Exception as exc:
            if is_fatal_device_error(exc):
                raise  # the device is gone: retrying each row would only fail again
            if len(rows) == 1:
                log.warning("chunk decode failed: %r", exc)
                outcomes[rows[0].index] = exc
                return
            log.warning("sub-batch of %d failed (%r); retrying rows alone", len(rows), exc)
            for row in rows:
                self._decode_sub_batch([row], outcomes, report)
            return
        for row, result in zip(rows, results, strict=True):
            outcomes[row.index] = result

    @torch.inference_mode()
    def _run(self, rows: list[_Row], report: BatchReport) -> list[Outcome]:
        m = self.model
        device = m.device
        lengths = torch.tensor([r.feats.shape[0] for r in rows], dtype=torch.int32)
        feats = pad_sequence([r.feats for r in rows], batch_first=True).to(device)
        cat_embs = torch.tensor(
            [[r.job.options.verbatimicity, 1.0 - r.job.options.verbatimicity] for r in rows],
            dtype=torch.float32,
            device=device,
        )
        chunking = rows[0].job.options.decoding_chunk_size  # one per sub-batch (pack)
        encoder_out, encoder_mask = m.model._forward_encoder(
            feats, lengths.to(device), chunking, -1, False, cat_embs=cat_embs
        )
        report.sub_batches.append(
            SubBatch(len(rows), int(lengths.sum()), int(lengths.max()) * len(rows))
        )
        encoder_lens = encoder_mask.squeeze(1).sum(1)
        ctc_by_penalty: dict[float, torch.Tensor] = {}
        for r in rows:
            bp = r.job.options.blank_penalty
            if bp not in ctc_by_penalty:
                ctc_by_penalty[bp] = m.model.ctc_logprobs(encoder_out, bp, m.blank_id)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            groups[r.job.options.search_key()].append(i)
        results: list[Outcome | None] = [None] * len(rows)
        for idx in groups.values():
            opts = rows[idx[0]].job.options
            ctc_probs = ctc_by_penalty[opts.blank_penalty]
            search = partial(
                search_group,
                self.model,
                opts,
                encoder_out=encoder_out,
                encoder_mask=encoder_mask,
                encoder_lens=encoder_lens,
                ctc_probs=ctc_probs,
                cat_embs=cat_embs,
            )
            for i, hyp in zip(idx, _search_isolated(search, idx), strict=True):
                if isinstance(hyp, Exception):
                    results[i] = hyp
                    continue
                try:
                    results[i] = self._words(rows[i], hyp, ctc_probs[i, : encoder_lens[i]])
                except Exception as exc:
                    results[i] = exc
        return results  # type: ignore[return-value]

    def _words(self, row: _Row, hyp: Hyp, log_probs: torch.Tensor) -> ChunkResult:
        m = self.model
        opts = row.job.options
        adjustment = (
            opts.timings_adjustment_ms
            if opts.timings_adjustment_ms is not None
            else m.timings_adjustment_ms
        )
        tokens = [t for t in hyp.tokens if t not in (m.sos, m.eos, m.blank_id)]
        if opts.word_timestamps == "rev":
            lp = log_probs.float().cpu().numpy()
            times = hyp.times
            if times is None or len(times) != len(tokens):
                times = _first_frames(lp, tokens, m.blank_id)
            words = rev_words(
                tokens,
                times,
                hyp.confidences,
                m.tokenizer,
                output_frame_ms=m.output_frame_ms,
                offset_ms=row.job.offset_ms,
                adjustment_ms=adjustment,
            )
        else:
            # Alignment reads only blank's and the hypothesis' columns: copy just those
            # to the host, not the whole (frames x vocabulary) matrix (20 MB per 20 s
            # chunk with Reverb's 10k units).
            columns = sorted({m.blank_id, *tokens})
            lp = log_probs[:, columns].float().cpu().numpy()
            words = aligned_words(
                tokens,
                lp,
                _frame_energy(row.feats, lp.shape[0]),
                m.tokenizer,
                blank_id=m.blank_id,
                output_frame_ms=m.output_frame_ms,
                offset_ms=row.job.offset_ms,
                adjustment_ms=adjustment,
                columns={c: k for k, c in enumerate(columns)},
            )
        return ChunkResult(words=words, tokens=tokens)


FATAL_DEVICE_ERROR_MARKERS = ("CUDA error", "device-side assert", "CUBLAS_STATUS", "CUDNN_STATUS")


def is_fatal_device_error(exc: BaseException) -> bool:
    """Errors after which the device context is unusable until the process restarts
    (CUDA has no recovery from a device-side assert)."""
    text = str(exc)
    return any(marker in text for marker in FATAL_DEVICE_ERROR_MARKERS)


def _search_isolated(search: Callable[..., list[Hyp]], idx: list[int]) -> list[Hyp | Exception]:
    """The group's hypotheses; if the group search fails, each row alone, so one bad
    row fails only itself (unless the device failed: then nothing is retried)."""
    try:
        return list(search(idx))
    except Exception as exc:
        if is_fatal_device_error(exc):
            raise
        if len(idx) == 1:
            return [exc]
    hyps: list[Hyp | Exception] = []
    for i in idx:
        try:
            hyps.extend(search([i]))
        except Exception as row_exc:
            hyps.append(row_exc)
    return hyps


def _first_frames(log_probs: np.ndarray, tokens: list[int], blank_id: int) -> list[int]:
    """Frame of each token from a forced alignment (for modes that give no times)."""
    if not tokens:
        return []
    spans = token_spans(force_align(log_probs, tokens, blank_id), len(tokens))
    return [max(first, 0) for first, _ in spans]


def _frame_energy(feats: torch.Tensor, num_out: int) -> np.ndarray:
    """Mean log-mel energy per encoder frame: the 7 input frames its conv2d window sees
    (stride 4), one vectorised pass instead of a Python loop per frame."""
    energy = feats.float().mean(dim=1).cpu().numpy()
    padded = np.concatenate([energy, np.full(4 * num_out + 7, np.nan, dtype=energy.dtype)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 7)[::4][:num_out]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows past the end
        out = np.nanmean(windows, axis=1)
    return np.where(np.isnan(out), energy[-1], out).astype(np.float32)
