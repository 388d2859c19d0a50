"""Audio in, transcript out, for one process holding the model (no Ray).

The Serve app does the same steps split across deployments: the ingress decodes and
plans chunks, the GPU replica runs ``BatchDecoder`` over chunks from many callers,
and the ingress merges with ``merge_chunks``. This class is the single-process path
used by the CLI, tests and the engine benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serve_app.engine.audio import as_waveform
from serve_app.engine.chunking import SAMPLE_RATE, chunk_jobs, merge_chunks
from serve_app.engine.decoder import BatchDecoder, BatchReport
from serve_app.engine.formats import make_transcript
from serve_app.engine.model import ReverbModel
from serve_app.engine.options import DecodeOptions
from serve_app.wire import ChunkJob, ChunkResult, Transcript


@dataclass
class Request:
    """One transcription request: audio (bytes or 16 kHz float array) and options."""

    audio: bytes | np.ndarray
    options: DecodeOptions


class Transcriber:
    """Transcribe whole requests, batching all their chunks together."""

    def __init__(
        self,
        model: ReverbModel,
        *,
        max_padded_frames: int | None = None,
        max_audio_seconds: float | None = None,
    ) -> None:
        self.model = model
        self.decoder = BatchDecoder(model, max_padded_frames=max_padded_frames)
        self.max_audio_seconds = max_audio_seconds
        self.last_reports: list[BatchReport] = []

    def transcribe(
        self, audio: bytes | np.ndarray, options: DecodeOptions | None = None
    ) -> Transcript:
        """One request; raises the request's error if it fails."""
        result = self.transcribe_many([Request(audio, options or DecodeOptions())])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def transcribe_many(self, requests: Sequence[Request]) -> list[Transcript | Exception]:
        """Several requests in one batched decode; each gets its transcript or error."""
        jobs: list[ChunkJob] = []
        owners: list[int] = []
        durations: dict[int, float] = {}
        outcomes: list[Transcript | Exception | None] = [None] * len(requests)
        for r, request in enumerate(requests):
            try:
                wave = as_waveform(request.audio, max_seconds=self.max_audio_seconds)
            except Exception as exc:
                outcomes[r] = exc
                continue
            durations[r] = wave.shape[0] / SAMPLE_RATE
            for job in chunk_jobs(wave, request.options):
                jobs.append(job)
                owners.append(r)
        results, report = self.decoder.decode(jobs)
        self.last_reports = [report]
        per_request: dict[int, list[ChunkResult]] = {r: [] for r in durations}
        for owner, result in zip(owners, results, strict=True):
            if isinstance(result, Exception):
                outcomes[owner] = result
            elif not isinstance(outcomes[owner], Exception):
                per_request[owner].append(result)
        for r, chunks in per_request.items():
            if outcomes[r] is None:
                opts = requests[r].options
                outcomes[r] = make_transcript(
                    merge_chunks(chunks),
                    duration=durations[r],
                    model=self.model.name,
                    decoding_mode=opts.decoding_mode,
                    verbatimicity=opts.verbatimicity,
                )
        return outcomes  # type: ignore[return-value]
