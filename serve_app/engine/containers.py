"""Which containers an upload may be, and how FFmpeg is told so.

FFmpeg probes the content, not the name, and some of its demuxers open other files or
URLs named *inside* the upload (concat, hls, dash, sdp/rtp, image sequences, playlists,
subtitles with includes): a 46-byte ffconcat text made the server read any audio file
it could reach. So the probe's choice must be on :data:`ALLOWED_DEMUXERS`, or
``avformat_open_input`` fails before the header is read, and nested opens get no
protocol at all (the upload itself is read through PyAV's in-memory I/O, which needs
none), so not even an allowed demuxer can follow a reference to a file or URL.
"""

from __future__ import annotations

ALLOWED_DEMUXERS: dict[str, str] = {
    "wav": "WAV/RIFF PCM and float: recorders, telephony exports, every audio tool",
    "flac": "FLAC: lossless archives and uploads from audio editors",
    "mp3": "MP3: podcasts and the most common legacy upload",
    "ogg": "Ogg (Opus, Vorbis, FLAC): Firefox's MediaRecorder, voice-note apps",
    "matroska": "Matroska/WebM (Opus): Chrome's and Firefox's MediaRecorder output",
    "mov": "MP4/M4A/MOV (AAC, ALAC): iOS and Android voice memos, Safari's MediaRecorder",
    "aac": "ADTS AAC: raw AAC streams from broadcast and some Android recorders",
}
"""FFmpeg demuxer names, each with why it is allowed. ``av_match_list`` also matches
the aliases FFmpeg lists with them: ``matroska,webm`` and ``mov,mp4,m4a,3gp,3g2,mj2``."""

OPEN_OPTIONS: dict[str, str] = {
    "format_whitelist": ",".join(ALLOWED_DEMUXERS),
    "protocol_whitelist": "none",
}
"""``av.open(..., options=OPEN_OPTIONS)`` for every upload."""
