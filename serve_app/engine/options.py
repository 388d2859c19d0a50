"""Per-request decoding options, validated once at the edge.

Every chunk of a request carries the same ``DecodeOptions``; rows of one batch may
carry different ones, and the batched decoder groups rows by ``search_key``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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

    decoding_mode: DecodingMode = "attention_rescoring"
    verbatimicity: float = Field(1.0, ge=0.0, le=1.0)
    beam_size: int = Field(10, ge=1, le=64)
    ctc_weight: float = Field(0.1, ge=0.0, le=1.0)
    reverse_weight: float = Field(0.0, ge=0.0, le=1.0)
    blank_penalty: float = Field(0.0, ge=0.0, le=100.0)
    length_penalty: float = Field(0.0, ge=-10.0, le=10.0)
    timings_adjustment_ms: float | None = Field(
        None, ge=0.0, le=2000.0, description="Word-time correction; the model's own when unset."
    )
    word_timestamps: WordTimestamps = "aligned"

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
