"""Result types shared by the engine, the formatters and the Serve layer.

They are pydantic models so they cross a Ray handle, serialise to JSON for the
HTTP API and validate in one place.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Word(BaseModel):
    """One recognised word with absolute times in seconds from the start of the audio."""

    word: str
    start: float = Field(ge=0.0)
    end: float = Field(ge=0.0)
    confidence: float = Field(ge=0.0, le=1.0)


class Segment(BaseModel):
    """A run of words shown together as one subtitle cue / OpenAI segment."""

    id: int
    start: float
    end: float
    text: str
    words: list[Word] = Field(default_factory=list)
    avg_confidence: float = 0.0


class Transcript(BaseModel):
    """What one request gets back, before rendering to a response format."""

    text: str
    words: list[Word]
    segments: list[Segment]
    duration: float = Field(ge=0.0, description="Audio duration in seconds.")
    language: str = "en"
    model: str = "reverb_asr_v1"
    decoding_mode: str = "attention_rescoring"
    verbatimicity: float = 1.0
