"""A realtime session's events: turns from the endpointer or the client's commit,
append-only deltas, item ids chained, one final per item over exactly its audio."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest

from serve_app.live.decoder import LiveStepper, LiveStream, StepOutput, trailing_quiet_frames
from serve_app.live.endpointing import SpeechStarted, SpeechStopped
from serve_app.live.session import IDLE_KEEP_S, LiveSession

WORDS = {1: "call", 2: "the", 3: "team", 4: "at", 5: "nine"}


def detokenize(tokens):
    return " ".join(WORDS[t] for t in tokens)


def append_event(samples: np.ndarray) -> dict:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}


def drain(session: LiveSession) -> list[dict]:
    out = []
    while not session.outbox.empty():
        out.append(session.outbox.get_nowait())
    return out


class Finals:
    """The batch path's stand-in: records each turn's audio, answers in order."""

    def __init__(self) -> None:
        self.audio: list[np.ndarray] = []
        self.options: list = []

    async def __call__(self, audio, options):
        self.audio.append(audio)
        self.options.append(options)
        return f"final {len(self.audio)}"


SERVER_VAD_UPDATE = {
    "type": "session.update",
    "session": {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 16000},
                "turn_detection": {
                    "type": "server_vad",
                    "prefix_padding_ms": 200,
                    "silence_duration_ms": 400,
                },
            }
        },
    },
}


def make_session(tiny_model, finals, detok=detokenize) -> LiveSession:
    def stream(settings):
        rules = settings.endpoint_rules
        return LiveStream(
            settings.transcription.verbatimicity, beam_size=4, device=tiny_model.device, rules=rules
        )

    return LiveSession(stream, detok, finals)


def test_endpointed_turns_give_started_deltas_stopped_committed_and_one_final_each(tiny_model):
    """Step results are injected, so the endpoints and hypotheses are exact; the audio
    and the events are the session's own."""

    async def run():
        finals = Finals()
        session = make_session(tiny_model, finals)
        session.handle(SERVER_VAD_UPDATE)
        session.handle(append_event(np.full(16000 * 6, 0.01, np.float32)))  # 6 s
        session.on_step(StepOutput((), [SpeechStarted(25)]))  # speech from 1.0 s
        session.on_step(StepOutput((1,)))
        session.on_step(StepOutput((1, 2)))  # "call" settles
        session.on_step(StepOutput((1, 2, 3)))  # "the" settles
        session.on_step(StepOutput((1, 2, 4)))  # revision of the last word only
        session.on_step(StepOutput((1, 2, 4, 5), [SpeechStopped(75)]))  # ends at 3.0 s
        session.on_step(StepOutput((3, 4), [SpeechStarted(100)]))  # a second turn at 4.0 s
        session.on_step(StepOutput((3, 4, 5), [SpeechStopped(125)]))
        await session.drain()
        return finals, drain(session)

    finals, events = asyncio.run(run())
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["session.created", "session.updated"]
    started = [e for e in events if e["type"] == "input_audio_buffer.speech_started"]
    assert [e["audio_start_ms"] for e in started] == [800, 3800]
    stopped = [e for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
    assert [e["audio_end_ms"] for e in stopped] == [3000, 5000]
    first, second = (s["item_id"] for s in started)
    deltas = [
        e["delta"]
        for e in events
        if e["type"].endswith("transcription.delta") and e["item_id"] == first
    ]
    # Append-only: the unsettled last word is held back, a revision of it is not sent,
    # and the rest of the partial goes out when the turn ends.
    assert deltas == ["call", " the", " at nine"]
    committed = [e for e in events if e["type"] == "input_audio_buffer.committed"]
    assert [(c["item_id"], c["previous_item_id"]) for c in committed] == [
        (first, None),
        (second, first),
    ]
    completed = [e for e in events if e["type"].endswith("transcription.completed")]
    assert sorted(c["item_id"] for c in completed) == sorted([first, second])
    # Each final got exactly its turn's audio: 0.8-3.0 s and 3.8-5.0 s.
    assert [a.size for a in finals.audio] == [int(2.2 * 16000), int(1.2 * 16000)]
    assert completed[0]["usage"] == {"type": "duration", "seconds": 2.2}


def test_a_word_followed_by_blank_frames_is_sent_before_the_next_word(tiny_model):
    """A partial's last word goes out once WORD_SETTLE_MS (160 ms: 4 frames) of blanks
    follow its spike, counted across steps; fewer, and it waits."""

    async def run():
        session = make_session(tiny_model, Finals())
        session.handle(SERVER_VAD_UPDATE)
        session.handle(append_event(np.full(16000 * 4, 0.01, np.float32)))
        chunk = {"frames": 16}
        session.on_step(StepOutput((), [SpeechStarted(20)], trailing_quiet=16, **chunk))
        session.on_step(StepOutput((1,), trailing_quiet=3, **chunk))  # 120 ms: held
        held = drain(session)
        session.on_step(StepOutput((1,), trailing_quiet=16, **chunk))  # 19 frames quiet
        session.on_step(StepOutput((1, 2), trailing_quiet=4, **chunk))  # exactly 160 ms
        session.on_step(StepOutput((1, 2, 3), trailing_quiet=0, **chunk))  # still heard
        return held, drain(session)

    held, later = asyncio.run(run())
    deltas = [e["delta"] for e in held + later if e["type"].endswith("transcription.delta")]
    assert not [e for e in held if e["type"].endswith("transcription.delta")]
    assert deltas == ["call", " the"]


def test_trailing_quiet_frames_counts_blanks_after_the_last_spike():
    blank = np.array(
        [
            [0.9, 0.1, 0.9, 0.9, 0.9],  # spike at frame 1: 3 quiet frames after it
            [0.9, 0.9, 0.9, 0.9, 0.9],  # no spike: the whole chunk is quiet
            [0.9, 0.9, 0.9, 0.9, 0.2],  # spike on the last frame
        ]
    )
    assert trailing_quiet_frames(blank, np.full(3, blank.shape[1])).tolist() == [3, 5, 0]
    # A segment that stopped inside the chunk counts only the frames it used: the
    # third row's spike is past its 4 frames.
    assert trailing_quiet_frames(blank, np.array([3, 2, 4])).tolist() == [1, 2, 4]


def test_a_client_commit_leaves_nothing_of_its_turn_in_the_stream(tiny_model):
    """Audio sent faster than it is decoded and then committed: its frames waiting for a
    step, and the endpointer's state, go with the turn; the next turn's times count on
    from the commit."""

    async def run():
        finals = Finals()
        session = make_session(tiny_model, finals)
        session.handle(SERVER_VAD_UPDATE)
        session.handle(append_event(np.full(16000 * 10, 0.01, np.float32)))  # 10 s at once
        before = session.stream
        assert before.backlog_s > 9
        session.on_step(StepOutput((1, 2), [SpeechStarted(5)], trailing_quiet=16, frames=16))
        session.handle({"type": "input_audio_buffer.commit"})
        after = session.stream
        session.handle(append_event(np.full(16000 * 2, 0.01, np.float32)))
        session.on_step(StepOutput((3,), [SpeechStarted(10)], trailing_quiet=16, frames=16))
        await session.drain()
        return before, after, finals, drain(session)

    before, after, finals, events = asyncio.run(run())
    assert after is not before and after.segment == 0 and after.encoder.offset == 0
    assert after.backlog_s <= 2.0  # only what came after the commit
    assert [a.size for a in finals.audio] == [10 * 16000]  # the whole turn, from 0 s
    started = [e for e in events if e["type"] == "input_audio_buffer.speech_started"]
    assert [e["audio_start_ms"] for e in started] == [0, 10_000 + 400 - 200]  # 200 ms padding
    first, second = (e["item_id"] for e in started)
    deltas = {e["item_id"]: e["delta"] for e in events if e["type"].endswith("transcription.delta")}
    assert deltas == {first: "call the", second: "team"}


def test_deltas_go_on_after_a_revision_of_a_word_already_sent(tiny_model):
    """Deltas cannot take a word back; the words after a revised one still go out (they
    stopped for the rest of the turn before)."""

    async def run():
        session = make_session(tiny_model, Finals())
        session.handle(SERVER_VAD_UPDATE)
        session.handle(append_event(np.full(16000 * 4, 0.01, np.float32)))
        session.on_step(StepOutput((), [SpeechStarted(5)]))
        session.on_step(StepOutput((1, 2)))  # "call" sent
        session.on_step(StepOutput((3, 2, 4)))  # "call" revised to "team"
        session.on_step(StepOutput((3, 2, 4, 5), [SpeechStopped(80)]))
        await session.drain()
        return drain(session)

    events = asyncio.run(run())
    deltas = [e["delta"] for e in events if e["type"].endswith("transcription.delta")]
    assert deltas == ["call", " the", " at nine"]


@pytest.mark.parametrize(
    ("event", "code"),
    [
        ({"type": "input_audio_buffer.clear"}, "input_audio_buffer_cleared"),
        (SERVER_VAD_UPDATE, "session_updated"),
    ],
)
def test_a_turn_dropped_before_its_commit_still_ends_with_failed(tiny_model, event, code):
    """speech_started gave the client an item id; a clear or update drops the turn's
    audio, so the item ends with one failed event instead of never."""

    async def run():
        finals = Finals()
        session = make_session(tiny_model, finals)
        session.handle(SERVER_VAD_UPDATE)
        session.handle(append_event(np.full(16000 * 2, 0.01, np.float32)))
        session.on_step(StepOutput((1,), [SpeechStarted(5)]))
        session.handle(event)
        await session.drain()
        return finals, drain(session)

    finals, events = asyncio.run(run())
    (started,) = [e for e in events if e["type"] == "input_audio_buffer.speech_started"]
    ended = [
        e
        for e in events
        if e["type"].startswith("conversation.item.input_audio_transcription.")
        and not e["type"].endswith("delta")
    ]
    assert [(e["type"].rsplit(".", 1)[1], e["item_id"]) for e in ended] == [
        ("failed", started["item_id"])
    ]
    assert ended[0]["error"]["code"] == code
    assert not finals.audio


def test_a_final_keeps_the_options_of_its_turn(tiny_model):
    """An update right after a commit changes later turns, not the committed one."""

    async def run():
        finals = Finals()
        session = commit_only_session(tiny_model, finals)
        session.handle(append_event(np.full(16000, 0.01, np.float32)))
        session.handle({"type": "input_audio_buffer.commit"})
        update = {"turn_detection": None, "input_audio_transcription": {"verbatimicity": 0.0}}
        session.handle({"type": "transcription_session.update", "session": update})
        await session.drain()
        return finals

    finals = asyncio.run(run())
    assert [o.verbatimicity for o in finals.options] == [1.0]


def test_a_failed_step_is_an_error_and_the_turn_goes_on_to_its_final(tiny_model):
    """The step loop calls ``step_failed`` when a step raises: the client hears of it,
    the partials restart on a new segment, and the turn still ends with its final."""

    async def run():
        finals = Finals()
        session = make_session(tiny_model, finals)
        session.handle(SERVER_VAD_UPDATE)
        session.handle(append_event(np.full(16000 * 3, 0.01, np.float32)))
        session.on_step(StepOutput((), [SpeechStarted(5)]))
        session.on_step(StepOutput((1, 2)))  # "call" sent
        before = session.stream.segment
        session.step_failed()
        after = session.stream.segment
        session.on_step(StepOutput((4,), [SpeechStopped(60)], segment=after))
        await session.drain()
        return before, after, finals, drain(session)

    before, after, finals, events = asyncio.run(run())
    assert after == before + 1
    (error,) = [e for e in events if e["type"] == "error"]
    assert error["error"]["code"] == "step_failed"
    deltas = [e["delta"] for e in events if e["type"].endswith("transcription.delta")]
    assert deltas == ["call", " the at"]  # the earlier segment's words stay in the turn
    assert [e["type"] for e in events].count(
        "conversation.item.input_audio_transcription.completed"
    ) == 1
    assert len(finals.audio) == 1


def commit_only_session(tiny_model, finals) -> LiveSession:
    """A session on the real tiny model with turn detection off."""
    session = make_session(
        tiny_model, finals, lambda t: tiny_model.tokenizer.detokenize(list(t))[0]
    )
    session.handle({"type": "transcription_session.update", "session": {"turn_detection": None}})
    return session


def stream_in(session: LiveSession, stepper: LiveStepper, audio: np.ndarray, pieces: int) -> int:
    """Append ``audio`` in ``pieces`` appends, stepping whenever a chunk is ready;
    returns the longest encoder segment seen (frames)."""
    longest = 0
    for piece in np.split(audio, pieces):
        session.handle(append_event(piece))
        while stepper.ready([session.stream]):
            (out,) = stepper.step([session.stream])
            session.on_step(out)
            longest = max(longest, session.stream.encoder.offset)
    return longest


def test_without_turn_detection_only_the_commit_ends_a_turn(tiny_model, synth):
    """The real tiny model steps the stream; ten seconds of 24 kHz audio in 100 ms
    appends, then a commit: one item, one final over all of it."""

    async def run():
        finals = Finals()
        session = commit_only_session(tiny_model, finals)
        stream_in(session, LiveStepper(tiny_model), synth(10.0, seed=9, sample_rate=24000), 100)
        session.handle({"type": "input_audio_buffer.commit"})
        session.handle({"type": "input_audio_buffer.commit", "event_id": "again"})  # empty now
        await session.drain()
        return finals, drain(session)

    finals, events = asyncio.run(run())
    kinds = [e["type"] for e in events]
    assert "input_audio_buffer.speech_started" not in kinds
    assert kinds.count("input_audio_buffer.committed") == 1
    assert kinds.count("conversation.item.input_audio_transcription.completed") == 1
    assert abs(finals.audio[0].size - 160000) <= 16 * 20  # resampled 24 -> 16 kHz
    (error,) = [e for e in events if e["type"] == "error"]
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    assert error["error"]["event_id"] == "again"


def test_bad_events_are_errors_and_the_session_goes_on(tiny_model):
    async def run():
        session = make_session(tiny_model, Finals())
        session.handle({"type": "input_audio_buffer.append", "audio": "%%%"})
        session.handle({"type": "session.update", "session": {"type": "realtime"}})
        session.handle(append_event(np.zeros(2400, np.float32)))
        session.handle({"type": "input_audio_buffer.clear"})
        return drain(session)

    kinds = [e["type"] for e in asyncio.run(run())]
    assert kinds == ["session.created", "error", "error", "input_audio_buffer.cleared"]


def test_a_session_holds_bounded_audio_however_fast_it_is_sent(tiny_model):
    """Uncommitted audio is capped (an error, the session goes on, a commit frees it);
    with VAD on, old silence between turns is dropped once decoded, and audio may run
    at most MAX_BACKLOG_S ahead of the decoder (the VAD has not judged it yet)."""
    rate16k = {"type": "audio/pcm", "rate": 16000}

    def session_with(turn_detection) -> LiveSession:
        session = make_session(tiny_model, Finals())
        audio_input = {"format": rate16k, "turn_detection": turn_detection}
        update = {"type": "transcription", "audio": {"input": audio_input}}
        session.handle({"type": "session.update", "session": update})
        return session

    async def run():
        minute = append_event(np.zeros(60 * 16000, np.float32))
        commit_only = session_with(None)
        for _ in range(6):
            commit_only.handle(minute)
        held = commit_only._received - commit_only._buffer_start
        commit_only.handle({"type": "input_audio_buffer.commit"})
        commit_only.handle(minute)
        await commit_only.drain()
        # threshold 1: no frame is ever speech, so no turn starts
        vad = session_with({"type": "server_vad", "threshold": 1.0})
        stepper = LiveStepper(tiny_model)
        for _ in range(12):  # three minutes, decoded as they come
            vad.handle(append_event(np.zeros(15 * 16000, np.float32)))
            stream_in(vad, stepper, np.zeros(0, np.float32), 1)
        idle_held = vad._received - vad._buffer_start
        drain(vad)
        vad.handle(minute)  # a minute at once: further ahead than the VAD may lag
        return held, drain(commit_only), idle_held, drain(vad)

    held, events, idle_held, ahead = asyncio.run(run())
    assert held == 300 * 16000
    (error,) = [e for e in events if e["type"] == "error"]
    assert error["error"]["code"] == "input_audio_buffer_full"
    assert [e["type"] for e in events].count("input_audio_buffer.committed") == 1
    assert IDLE_KEEP_S * 16000 <= idle_held <= (IDLE_KEEP_S + 10) * 16000
    (error,) = [e for e in ahead if e["type"] == "error"]
    assert error["error"]["code"] == "input_audio_buffer_full"
    assert "faster than it is decoded" in error["error"]["message"]


@pytest.mark.slow
def test_four_minutes_without_a_pause_are_segmented_not_crashed(tiny_model, synth):
    """The positional table holds 5000 frames (200 s): a session that talks on without
    a commit or a pause must restart its encoder segment every 20 s."""

    async def run():
        finals = Finals()
        session = commit_only_session(tiny_model, finals)
        audio = synth(240.0, seed=5, sample_rate=24000)
        longest = stream_in(session, LiveStepper(tiny_model), audio, 480)  # 0.5 s appends
        segments = session.stream.segment  # the commit then starts a fresh stream
        session.handle({"type": "input_audio_buffer.commit"})
        await session.drain()
        return finals, drain(session), longest, segments

    finals, events, longest, segments = asyncio.run(run())
    assert longest <= 500 and segments >= 11
    assert [e["type"] for e in events].count(
        "conversation.item.input_audio_transcription.completed"
    ) == 1
    assert finals.audio[0].size == pytest.approx(240 * 16000, abs=400)
