"""Per-request decoding options, validated once at the edge.

Every chunk of a request carries the same ``DecodeOptions``; rows of one batch may
carry different ones, and the batched decoder groups rows by ``search_key``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DecodingMode = Literal[
    "ctc_greedy_search",
    "ctc_prefix_beam_search",
    "attention",
    "attention_rescoring",
    "joint_decoding",
]
DECODING_MODES: tuple[str, ...] = DecodingMode.__args__  # type: ignore[attr-defined]

WordTimestamps = Literal["aligned", "rev"]


class DecodeOptions(BaseModel):
    """How to decode one request. Defaults follow Rev's CLI except the mode.

    ``attention_rescoring`` is the default because it is the mode Rev's published
    long-form WER figures use; Rev's CLI defaults to ``ctc_prefix_beam_search``.
    ``word_timestamps="rev"`` reproduces Rev's CLI word times and confidences byte for
    byte; ``"aligned"`` (default) gives word ends from a CTC forced alignment and
    confidences from the posteriors in every mode.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    decoding_mode: DecodingMode = Field(
        "attention_rescoring",
        description="Search: CTC greedy or prefix beam, attention beam search, CTC "
        "n-best rescored by the attention decoder (Rev's published WER), or joint "
        "CTC/attention decoding.",
    )
    verbatimicity: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="1 transcribes every word spoken (fillers, repetitions); 0 gives "
        "clean, readable text. Values between blend the two styles.",
    )
    beam_size: int = Field(10, ge=1, le=64, description="Beam width of the beam searches.")
    ctc_weight: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Weight of the CTC score against the attention score when "
        "rescoring or joint decoding.",
    )
    reverse_weight: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Weight of the right-to-left attention decoder in rescoring.",
    )
    blank_penalty: float = Field(
        0.0,
        ge=0.0,
        le=100.0,
        description="Subtracted from the CTC blank log-probability; raise it when "
        "words are dropped.",
    )
    length_penalty: float = Field(
        0.0,
        ge=-10.0,
        le=10.0,
        description="Added per token in attention search; positive favours longer output.",
    )
    timings_adjustment_ms: float | None = Field(
        None,
        ge=0.0,
        le=2000.0,
        description="Word-time correction in ms; the model's own (Rev: 230) when unset.",
    )
    word_timestamps: WordTimestamps = Field(
        "aligned",
        description="'aligned': word ends from a CTC forced alignment, confidences "
        "from the posteriors, in every mode. 'rev': Rev's CLI word times, byte for byte.",
    )

    decoding_chunk_size: int = Field(
        -1,
        ge=-1,
        le=1024,
        description="-1: full context (the offline default). N > 0: the encoder sees "
        "N-frame chunks (40 ms each) with all earlier context, as a live stream would, "
        "like Rev's CLI option of that name; only dynamic-chunk-trained models (Reverb) "
        "decode well this way.",
        json_schema_extra={"not": {"const": 0}},  # the validator below, for API clients
    )

    @field_validator("decoding_chunk_size")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("decoding_chunk_size is -1 (full context) or a positive size")
        return value

    def search_key(self) -> tuple:
        """Options that must be equal for rows to share one search call."""
        return (
            self.decoding_mode,
            self.beam_size,
            self.ctc_weight,
            self.reverse_weight,
            self.blank_penalty,
            self.length_penalty,
        )
