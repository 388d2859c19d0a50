"""The Ingress's part for HTTP tests without Ray: the real request pipeline, with a
local chunk decoder standing in for the Transcriber handle.

Shared by the HTTP unit tests and the security suite's schema fuzzing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from serve_app.engine.audio import encode_wav
from serve_app.engine.chunking import CHUNK_FRAMES
from serve_app.pipeline import TranscriptionPipeline
from serve_app.serve.config import AppConfig
from serve_app.wire import ChunkDecodeError, ChunkJob, ChunkResult, UnavailableError, Word

CHUNK_MS = CHUNK_FRAMES * 10


def chunks_audio(count: int) -> bytes:
    """8 kHz WAV long enough for ``count`` chunks (the last one a short tail)."""
    seconds = CHUNK_MS / 1000 * (count - 1) + 1.0
    return encode_wav(np.zeros(int(seconds * 8000), np.float32), 8000)


class FakeBackend:
    """The Ingress's part, with chunk i finishing after (10 - i) ticks so the last chunk
    is ready first; ``fail_chunk`` fails one chunk, ``bug`` raises a plain bug."""

    def __init__(self, **config: Any) -> None:
        self.config = AppConfig(model="fake", **config)
        self.api_key = self.config.resolve_api_key()
        self.started_at = 0
        self.observed: list[tuple[str, int]] = []
        self.error_codes: list[str | None] = []
        self.first_deltas: list[float] = []
        self.fail_chunk: int | None = None
        self.bug = False
        self.ready = True
        self.decoded_chunks = 0
        self.pipeline = TranscriptionPipeline(
            self._decode,
            limits=self.config.pipeline_limits(),
            model_name=self.config.served_model_name,
        )

    async def _decode(self, job: ChunkJob) -> ChunkResult:
        index = round(job.offset_ms / CHUNK_MS)
        self.decoded_chunks += 1
        await asyncio.sleep(0.01 * (10 - index))
        if self.bug:
            raise RuntimeError("a secret bug")
        if index == self.fail_chunk:
            raise ChunkDecodeError("model failed")
        start = index * CHUNK_MS / 1000
        return ChunkResult(
            words=[Word(word=f"w{index}", start=start, end=start + 1, confidence=0.9)],
            tokens=[index],
        )

    async def readiness(self) -> dict[str, Any]:
        if not self.ready:
            raise UnavailableError("not ready")
        return {"model": "m", "device": "cpu", "parameters": 1, "in_flight": 0}

    def observe(self, route: str, status: int, seconds: float, code: str | None) -> None:
        self.observed.append((route, status))
        self.error_codes.append(code)

    def observe_first_delta(self, seconds: float) -> None:
        self.first_deltas.append(seconds)
