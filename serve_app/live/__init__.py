"""Live transcription sessions (the realtime WebSocket's engine side): endpointing on
the model's own CTC posteriors, and the per-session state of a batched chunk step.
Plain Python and torch, no Ray and no web framework, like the engine."""
