"""Decoding can only read the upload: no demuxer that follows references is reachable.

FFmpeg picks a demuxer by probing the content, and several demuxers open files or
URLs named inside the upload (concat, hls, sdp, image sequences). Each attack below
points at a canary FIFO next to the working directory; it must be refused as 415
and the canary must never be opened. The positive control shows the canary does
notice FFmpeg opening it when the allowlist is not applied.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import pytest
from canary import Canary

from serve_app.engine.audio import decode_audio
from serve_app.engine.containers import ALLOWED_DEMUXERS
from serve_app.wire import AudioDecodeError

CANARY = "canary.opus"


def attacks(canary: Path) -> dict[str, bytes]:
    """Uploads that name the canary by every route FFmpeg knows."""
    absolute = str(canary)
    return {
        "ffconcat_relative": f"ffconcat version 1.0\nfile {CANARY}\n".encode(),
        "ffconcat_quoted": f"ffconcat version 1.0\nfile '{CANARY}'\n".encode(),
        "ffconcat_dotdot": f"ffconcat version 1.0\nfile 'x/../{CANARY}'\n".encode(),
        "ffconcat_absolute": f"ffconcat version 1.0\nfile '{absolute}'\n".encode(),
        "ffconcat_file_url": f"ffconcat version 1.0\nfile 'file:{absolute}'\n".encode(),
        "ffconcat_concat_protocol": (
            f"ffconcat version 1.0\nfile 'concat:{absolute}|{absolute}'\n".encode()
        ),
        "hls_relative": f"#EXTM3U\n#EXT-X-TARGETDURATION:5\n#EXTINF:5,\n{CANARY}\n".encode(),
        "hls_file_url": f"#EXTM3U\n#EXTINF:5,\nfile://{absolute}\n#EXT-X-ENDLIST\n".encode(),
        "sdp_rtp": (
            b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio 5004 RTP/AVP 0\r\n"
        ),
        "bare_file_url": f"file:{absolute}".encode(),
    }


@pytest.fixture
def canary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Canary(tmp_path / CANARY) as watched:
        yield watched


@pytest.mark.parametrize("name", list(attacks(Path("/x"))))
def test_reference_following_uploads_are_415_and_never_open_the_canary(name, canary):
    upload = attacks(canary.path)[name]
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(upload, max_seconds=60)
    assert info.value.status_code == 415
    assert not canary.opened, f"{name} made FFmpeg open {canary.path}"


def test_positive_control_the_canary_sees_ffmpeg_follow_ffconcat(canary):
    """Without the allowlist FFmpeg does open the named file (the attack is real)."""
    upload = attacks(canary.path)["ffconcat_relative"]
    try:
        with av.open(io.BytesIO(upload), mode="r") as container:
            for _ in container.demux():
                pass
    except av.error.FFmpegError:
        pass  # the FIFO gives EOF; what matters is that it was opened
    assert canary.opened


def test_every_allowed_demuxer_exists_and_says_why():
    for name, reason in ALLOWED_DEMUXERS.items():
        assert name in av.formats_available, name
        assert len(reason) > 20, name
    assert not {"concat", "hls", "dash", "sdp", "rtp", "image2", "tee"} & set(ALLOWED_DEMUXERS)
