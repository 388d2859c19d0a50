"""Counters that show whether batching works, as a handle method and as Prometheus.

``BatchStats`` is plain Python kept by each Transcriber replica and returned by its
``stats()`` handle method, so tests and benchmarks can read exact numbers. The same
events feed Ray's Prometheus metrics (``ray.serve.metrics``), which Ray exports from
every replica with the deployment and replica as tags; those are created lazily
because they only work inside a Ray worker.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from serve_app.pipeline import PipelineObserver
from serve_app.serve.realtime_observer import RealtimeObserver

if TYPE_CHECKING:  # the engine's decoder imports torch; keep this module light
    from serve_app.engine.decoder import BatchReport

BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
SECONDS_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
RTF_BUCKETS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2]
"""Decode seconds per audio second: an H200 batch sits near the bottom, a CPU one higher."""
EFFICIENCY_BUCKETS = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0]
STEP_SECONDS_BUCKETS = [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28]
"""A live step must stay under its chunk's duration (0.32 s for 8 frames, 0.64 s for 16)."""
FRAMES_PER_SECOND = 100  # 10 ms fbank frames
CLIENT_CLOSED_REQUEST = 499
"""The status the edge records for a client that hung up before any answer."""


EXPORTED_METRICS: dict[str, str] = {
    # Ingress
    "ray_reverb_requests_total": "counter",
    "ray_reverb_request_seconds": "histogram",
    "ray_reverb_rejections_total": "counter",
    "ray_reverb_audio_received_seconds_total": "counter",
    "ray_reverb_audio_seconds_total": "counter",
    "ray_reverb_queue_audio_seconds": "gauge",
    "ray_reverb_queued_requests": "gauge",
    "ray_reverb_sse_first_delta_seconds": "histogram",
    "ray_reverb_chunk_retries_total": "counter",
    # Transcriber
    "ray_reverb_transcriber_batches_total": "counter",
    "ray_reverb_transcriber_rows_total": "counter",
    "ray_reverb_transcriber_failed_rows_total": "counter",
    "ray_reverb_transcriber_forwards_total": "counter",
    "ray_reverb_transcriber_real_frames_total": "counter",
    "ray_reverb_transcriber_padded_frames_total": "counter",
    "ray_reverb_transcriber_batch_rows": "histogram",
    "ray_reverb_transcriber_batch_seconds": "histogram",
    "ray_reverb_transcriber_batch_rtf": "histogram",
    "ray_reverb_transcriber_batch_padding_efficiency": "histogram",
    # Realtime
    "ray_reverb_realtime_sessions": "gauge",
    "ray_reverb_realtime_session_ends_total": "counter",
    "ray_reverb_realtime_refusals_total": "counter",
    "ray_reverb_realtime_step_rows": "histogram",
    "ray_reverb_realtime_step_seconds": "histogram",
    "ray_reverb_realtime_step_failures_total": "counter",
    "ray_reverb_realtime_turns_total": "counter",
    "ray_reverb_realtime_final_seconds": "histogram",
    "ray_reverb_realtime_turn_audio_seconds_total": "counter",
}
"""Every metric defined below, as Ray exports it (``ray_`` prefixed), and its Prometheus
type: what dashboards may query. ``tests/serve/reliability/test_metrics.py`` checks
that a running app exports each, and the Grafana dashboard's test that it names no
other."""


@dataclass
class BatchStats:
    """Running totals for one Transcriber replica since it started."""

    batches: int = 0
    rows: int = 0
    failed_rows: int = 0
    forwards: int = 0
    real_frames: int = 0
    padded_frames: int = 0
    max_rows_in_batch: int = 0
    decode_seconds: float = 0.0
    rows_per_batch: dict[int, int] = field(default_factory=dict)
    """How many batches had each row count, so a caller can diff two snapshots."""
    last_success_at: float = field(default_factory=time.monotonic)

    def record(self, report: BatchReport, seconds: float) -> None:
        self.batches += 1
        self.rows += report.rows
        self.failed_rows += report.failed_rows
        self.forwards += report.forwards
        self.real_frames += report.real_frames
        self.padded_frames += report.padded_frames
        self.max_rows_in_batch = max(self.max_rows_in_batch, report.rows)
        self.rows_per_batch[report.rows] = self.rows_per_batch.get(report.rows, 0) + 1
        self.decode_seconds += seconds
        if report.failed_rows < report.rows:
            self.last_success_at = time.monotonic()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["last_success_at"]
        data["mean_rows_per_batch"] = self.rows / self.batches if self.batches else 0.0
        data["padding_efficiency"] = (
            self.real_frames / self.padded_frames if self.padded_frames else 1.0
        )
        return data


class TranscriberMetrics:
    """Prometheus view of the same events ``BatchStats`` counts."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        def counter(name: str, description: str) -> Counter:
            return Counter(f"reverb_transcriber_{name}", description=description)

        self.batches = counter("batches_total", "Batches decoded.")
        self.rows = counter("rows_total", "Chunks decoded (rows over all batches).")
        self.failed_rows = counter("failed_rows_total", "Chunks whose decode failed.")
        self.forwards = counter("forwards_total", "Encoder forwards (sub-batches).")
        self.real_frames = counter("real_frames_total", "Feature frames holding audio.")
        self.padded_frames = counter("padded_frames_total", "Feature frames incl. padding.")
        self.batch_size = Histogram(
            "reverb_transcriber_batch_rows",
            description="Chunks per batch.",
            boundaries=BATCH_SIZE_BUCKETS,
        )
        self.batch_seconds = Histogram(
            "reverb_transcriber_batch_seconds",
            description="Wall time of one batch decode.",
            boundaries=SECONDS_BUCKETS,
        )
        self.batch_rtf = Histogram(
            "reverb_transcriber_batch_rtf",
            description="Real-time factor of one batch: its wall time over the seconds of "
            "audio in it (lower is faster; 1 / RTF is the RTFx).",
            boundaries=RTF_BUCKETS,
        )
        self.batch_efficiency = Histogram(
            "reverb_transcriber_batch_padding_efficiency",
            description="Share of one batch's feature frames that hold audio, not padding.",
            boundaries=EFFICIENCY_BUCKETS,
        )

    def record(self, report: BatchReport, seconds: float) -> None:
        self.batches.inc()
        if report.rows:
            self.rows.inc(report.rows)
        if report.failed_rows:
            self.failed_rows.inc(report.failed_rows)
        if report.forwards:
            self.forwards.inc(report.forwards)
            self.real_frames.inc(report.real_frames)
            self.padded_frames.inc(report.padded_frames)
        self.batch_size.observe(report.rows)
        self.batch_seconds.observe(seconds)
        if report.real_frames:
            self.batch_rtf.observe(seconds * FRAMES_PER_SECOND / report.real_frames)
            self.batch_efficiency.observe(report.padding_efficiency)


class IngressMetrics(PipelineObserver):
    """Requests by route and status, errors by reason, audio in and out, the queue,
    time to the first SSE delta and chunk retries, for one Ingress replica."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.requests = Counter(
            "reverb_requests_total",
            description="HTTP requests answered, by route and status code.",
            tag_keys=("route", "status"),
        )
        self.latency = Histogram(
            "reverb_request_seconds",
            description="Time to answer a transcription request.",
            boundaries=SECONDS_BUCKETS,
            tag_keys=("route",),
        )
        self.rejections = Counter(
            "reverb_rejections_total",
            description="Requests answered with an error, by status and error code "
            "(413 too large, 415 not audio, 429 per-client limit, 503 overloaded, ...).",
            tag_keys=("status", "code"),
        )
        self.received_seconds = Counter(
            "reverb_audio_received_seconds_total",
            description="Seconds of audio received (decoded from uploads and handle calls).",
        )
        self.transcribed_seconds = Counter(
            "reverb_audio_seconds_total", description="Seconds of audio transcribed."
        )
        self.queue_audio = Gauge(
            "reverb_queue_audio_seconds",
            description="Audio admitted and not yet decoded (on the model and waiting), s.",
        )
        self.queued = Gauge(
            "reverb_queued_requests", description="Transcriptions waiting for the model."
        )
        self.first_delta = Histogram(
            "reverb_sse_first_delta_seconds",
            description="Time from a streamed request's arrival to its first text delta.",
            boundaries=SECONDS_BUCKETS,
        )
        self.chunk_retries = Counter(
            "reverb_chunk_retries_total",
            description="Chunk calls sent once more because their model replica was lost.",
        )

    def record_request(self, route: str, status: int, seconds: float, code: str | None) -> None:
        self.requests.inc(tags={"route": route, "status": str(status)})
        self.latency.observe(seconds, tags={"route": route})
        if status >= 400 and status != CLIENT_CLOSED_REQUEST:  # 499: nobody was answered
            self.rejections.inc(tags={"status": str(status), "code": code or "other"})

    def record_first_delta(self, seconds: float) -> None:
        self.first_delta.observe(seconds)

    def record_chunk_retry(self) -> None:
        self.chunk_retries.inc()

    def audio_received(self, seconds: float) -> None:
        self.received_seconds.inc(seconds)

    def audio_transcribed(self, seconds: float) -> None:
        self.transcribed_seconds.inc(seconds)

    def queue_changed(self, audio_ahead_s: float, queued: int) -> None:
        self.queue_audio.set(audio_ahead_s)
        self.queued.set(queued)


class RealtimeMetrics(RealtimeObserver):
    """One realtime replica's sessions, refusals, batched steps and turn finals, as
    Prometheus: what shows whether the replica keeps up (step time against the chunk's
    duration, streams per step) and what its callers got."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.sessions = Gauge(
            "reverb_realtime_sessions", description="Live sessions open on the replica."
        )
        self.ends = Counter(
            "reverb_realtime_session_ends_total",
            description="Live sessions ended, by reason (closed by the client, expired at "
            "max_session_s, slow_reader: its events went unread, error).",
            tag_keys=("reason",),
        )
        self.refusals = Counter(
            "reverb_realtime_refusals_total",
            description="WebSockets refused before a session began, by code "
            "(unauthorized, invalid_intent, session_limit_reached).",
            tag_keys=("code",),
        )
        self.step_rows = Histogram(
            "reverb_realtime_step_rows",
            description="Sessions decoded together in one batched chunk step.",
            boundaries=BATCH_SIZE_BUCKETS,
        )
        self.step_seconds = Histogram(
            "reverb_realtime_step_seconds",
            description="Time of one batched chunk step; above the chunk's duration "
            "(0.32 s at chunk_size 8) the replica falls behind real time.",
            boundaries=STEP_SECONDS_BUCKETS,
        )
        self.step_failures = Counter(
            "reverb_realtime_step_failures_total",
            description="Sessions whose batched step raised (each got an error event).",
        )
        self.turns = Counter(
            "reverb_realtime_turns_total",
            description="Turns whose final came back (completed) or failed.",
            tag_keys=("outcome",),
        )
        self.final_seconds = Histogram(
            "reverb_realtime_final_seconds",
            description="Time from a turn's commit to its final transcript.",
            boundaries=SECONDS_BUCKETS,
        )
        self.turn_audio = Counter(
            "reverb_realtime_turn_audio_seconds_total",
            description="Seconds of audio in the turns sent for a final.",
        )

    def sessions_open(self, count: int) -> None:
        self.sessions.set(count)

    def session_ended(self, reason: str) -> None:
        self.ends.inc(tags={"reason": reason})

    def session_refused(self, code: str) -> None:
        self.refusals.inc(tags={"code": code})

    def step_done(self, rows: int, seconds: float) -> None:
        self.step_rows.observe(rows)
        self.step_seconds.observe(seconds)

    def step_failed(self, rows: int) -> None:
        self.step_failures.inc(rows)

    def turn_ended(self, completed: bool, seconds: float, audio_seconds: float) -> None:
        self.turns.inc(tags={"outcome": "completed" if completed else "failed"})
        self.final_seconds.observe(seconds)
        self.turn_audio.inc(audio_seconds)
