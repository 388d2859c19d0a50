"""Validated settings for the Serve application and the Transcriber's batching.

``AppConfig`` is what ``serve_app.app:build_app`` receives as ``args`` (from a Serve
config file or from Python). It is validated once in the builder, so a typo in a
YAML key or an impossible limit fails ``serve run`` instead of a replica at 3 a.m.
``BatchingConfig`` is the Transcriber's ``user_config``: it is kept apart because
Serve applies it to live replicas through ``reconfigure`` without a restart.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from serve_app.engine.model_loader import model_id
from serve_app.pipeline import PipelineLimits

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


INGRESS_HEADROOM = 16
"""Calls Serve admits beyond our own limits: health probes, stats, handle calls."""


class AppConfig(BaseModel):
    """Builder ``args``: which model to serve, how to reach it and what to refuse."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    # -- model ---------------------------------------------------------------------
    model: str = Field(
        "reverb_asr_v1",
        min_length=1,
        description="A Reverb model folder, or a hub model name such as reverb_asr_v1.",
    )
    model_name: str | None = Field(
        None,
        min_length=1,
        description="The id served at /v1/models; defaults to the folder name or model name.",
    )
    model_aliases: list[str] = Field(
        default_factory=lambda: ["whisper-1"],
        description="Other model ids accepted for this model, so OpenAI SDK code that "
        "passes model='whisper-1' works unchanged.",
    )
    checkpoint_name: str | None = None
    cache_dir: str | None = Field(None, description="Where hub snapshots are cached.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    num_gpus: float | None = Field(
        None,
        ge=0,
        description="GPUs per Transcriber replica; default 1 for a cuda device, else 0. "
        "A Serve config's ray_actor_options replaces this wholesale.",
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs per Transcriber replica.")
    max_padded_frames: int | None = Field(
        None, ge=2051, description="Padded fbank frames per forward; the engine's default if unset."
    )

    # -- limits --------------------------------------------------------------------
    max_upload_bytes: int = Field(100 * 1024 * 1024, gt=0)
    max_audio_seconds: float = Field(7200.0, gt=0)
    max_concurrent_requests: int = Field(
        32,
        ge=1,
        description="Transcriptions on the model at once per Ingress replica; more wait "
        "in its queue (max_queued_requests, max_queue_wait_s).",
    )
    max_queued_requests: int = Field(
        256,
        ge=0,
        description="Transcriptions per Ingress replica decoding or waiting for the model "
        "besides those on it; more are refused at once with 503.",
    )
    max_queue_wait_s: float = Field(
        30.0,
        ge=0,
        description="A transcription whose projected wait for the model (the audio ahead "
        "of it over the measured throughput) is longer is refused with 503 and a "
        "Retry-After of when it would fit.",
    )
    max_chunks_in_flight_per_request: int = Field(
        4,
        ge=1,
        description="20 s chunks of one request on the model at once: a long file cannot "
        "fill the replicas' queues ahead of a short one. Raise it to let one long file "
        "use more replicas.",
    )
    initial_throughput: float = Field(
        1.0,
        gt=0,
        description="Audio-seconds decoded per second assumed until the Ingress has "
        "measured its own (it measures within the first seconds of load).",
    )
    deadline_floor_s: float = Field(
        30.0, gt=0, description="The shortest deadline any transcription gets."
    )
    deadline_factor: float = Field(
        4.0,
        gt=0,
        description="A transcription's deadline: deadline_floor_s + deadline_factor x the "
        "time its audio and the audio ahead of it take at the measured throughput, "
        "capped by request_timeout_s. Past it: 504, its chunk calls cancelled.",
    )
    max_decoded_audio_seconds: float = Field(
        28800.0,
        gt=0,
        description="Decoded audio one Ingress replica holds at once, in seconds "
        "(float32 at 16 kHz: 28800 s is 1.8 GB); a decode that would pass it is a 503. "
        "At least max_audio_seconds, so the longest allowed file fits.",
    )
    max_concurrent_uploads: int = Field(
        128,
        ge=1,
        description="Request bodies being received at once per Ingress replica before 503; "
        "kept apart from max_concurrent_requests so slow uploads cannot lock out others.",
    )
    body_grace_s: float = Field(
        10.0,
        gt=0,
        description="Time a request body may take before min_body_bytes_per_s applies.",
    )
    min_body_bytes_per_s: int = Field(
        16 * 1024,
        ge=1,
        description="After the grace time, a body must have arrived at least this fast "
        "on average, or it is cut with 408 (16 kB/s: a 100 MB upload may take ~100 min).",
    )
    max_requests_per_client: int | None = Field(
        None,
        ge=1,
        description="Transcriptions one client may hold at once per Ingress replica "
        "(uploading, waiting or on the model); more get 429 with Retry-After, so one "
        "client cannot take the queue from the rest. Unset: no per-client limit.",
    )
    client_id_header: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9-]+$",
        description="Tell clients apart by this request header (e.g. X-Real-IP) instead "
        "of the connection's peer address. Set it only behind a proxy that overwrites "
        "the header, or any client can claim any identity.",
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with every 503 and 429.")
    request_timeout_s: float = Field(
        900.0,
        gt=0,
        description="The longest deadline of any transcription, from admission to its "
        "last chunk, enforced by the Ingress itself (504). Ray's own control headers are "
        "refused, so no client can extend or disable it.",
    )

    # -- HTTP ----------------------------------------------------------------------
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed to call the API."
    )
    api_key: SecretStr | None = Field(
        None, description="Bearer key every /v1 route requires; off when unset."
    )
    api_key_env: str | None = Field(
        None,
        description="Name of an environment variable holding the key, so that config "
        "files need not contain secrets. Read on each Ingress replica.",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("model_aliases")
    @classmethod
    def _clean_aliases(cls, value: list[str]) -> list[str]:
        if any(not alias.strip() for alias in value):
            raise ValueError("model aliases must be non-empty strings")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _longest_file_fits(self) -> AppConfig:
        if self.max_decoded_audio_seconds < self.max_audio_seconds:
            raise ValueError("max_decoded_audio_seconds must be at least max_audio_seconds")
        return self

    @model_validator(mode="after")
    def _one_key_source(self) -> AppConfig:
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("set api_key or api_key_env, not both")
        if self.api_key is not None and not self.api_key.get_secret_value():
            raise ValueError("api_key must not be empty; omit it to turn auth off")
        return self

    # -- derived -------------------------------------------------------------------

    @property
    def served_model_name(self) -> str:
        """The id clients see: explicit name, else a folder's base name, else the ref."""
        return self.model_name or model_id(self.model)

    @property
    def accepted_model_ids(self) -> list[str]:
        """The served id first, then its aliases (what /v1/models lists)."""
        return list(dict.fromkeys([self.served_model_name, *self.model_aliases]))

    @property
    def transcriber_num_gpus(self) -> float:
        """GPUs to reserve: without a reservation Ray hides every GPU from the replica."""
        if self.num_gpus is not None:
            return self.num_gpus
        return 1.0 if self.device.startswith("cuda") else 0.0

    @property
    def ingress_max_ongoing_requests(self) -> int:
        """Serve's per-replica limit for the Ingress: every upload arriving plus every
        request held, with room for probes, so that our limits (and OpenAI-shaped
        answers) decide, never Serve's proxy queue."""
        return (
            self.max_concurrent_uploads
            + self.max_concurrent_requests
            + self.max_queued_requests
            + INGRESS_HEADROOM
        )

    @property
    def transcriber_max_queued_requests(self) -> int:
        """Chunk calls one Ingress may have waiting for a Transcriber replica: all its
        slots' fan-out windows, plus probes. Serve counts it per caller; past it the
        call fails with BackPressureError, which the Ingress answers as 503."""
        return self.max_concurrent_requests * self.max_chunks_in_flight_per_request + (
            INGRESS_HEADROOM
        )

    def pipeline_limits(self) -> PipelineLimits:
        """The request pipeline's limits, from this config."""
        return PipelineLimits(
            max_upload_bytes=self.max_upload_bytes,
            max_audio_seconds=self.max_audio_seconds,
            max_concurrent_requests=self.max_concurrent_requests,
            request_timeout_s=self.request_timeout_s,
            max_decoded_audio_seconds=self.max_decoded_audio_seconds,
            max_queued_requests=self.max_queued_requests,
            max_queue_wait_s=self.max_queue_wait_s,
            max_chunks_in_flight_per_request=self.max_chunks_in_flight_per_request,
            deadline_floor_s=self.deadline_floor_s,
            deadline_factor=self.deadline_factor,
            initial_throughput=self.initial_throughput,
        )

    def resolve_api_key(self) -> str | None:
        """The key to enforce, read now (in the replica) so env-var keys never travel."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise RuntimeError(
                f"api_key_env names {self.api_key_env!r} but that variable is empty or unset "
                "in the Ingress replica; set it (e.g. runtime_env.env_vars) or drop api_key_env."
            )
        return key

    def with_absolute_model_path(self, base: Path | None = None) -> AppConfig:
        """Pin a relative model folder to an absolute path while the caller's cwd is known.

        Replicas run in other working directories, so ``models/tiny_random`` must be
        resolved in the process that builds the app.
        """
        path = Path(self.model).expanduser()
        if path.is_absolute():
            return self
        candidate = (base or Path.cwd()) / path
        if not candidate.is_dir():
            return self
        update: dict[str, object] = {"model": str(candidate.resolve())}
        if self.model_name is None:
            update["model_name"] = self.served_model_name
        return self.model_copy(update=update)


class BatchingConfig(BaseModel):
    """The Transcriber's ``user_config``; changes apply live through ``reconfigure``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(16, ge=1, le=1024, description="Chunks per batch at most.")
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, le=10, description="How long a partial batch waits for more chunks."
    )
