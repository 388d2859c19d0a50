// The download formats, rendered in the page from the verbose_json body the stream's
// done event carries, so one upload gives every format. They follow
// serve_app/engine/formats.py exactly (Python's rounding included); the browser tests
// compare each download with the server's own response for the same audio.

/** Python's round(): halves go to the even neighbour. */
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Python's f"{x:.2f}": exact ties (only k/8 are exact in binary) go to even. */
function fixed2(x) {
  if (Number.isInteger(x * 8) && !Number.isInteger(x * 4)) {
    return (roundHalfEven(x * 100) / 100).toFixed(2);
  }
  return x.toFixed(2);
}

function toMs(seconds) {
  return seconds > 0 ? roundHalfEven(seconds * 1000) : 0;
}

function clock(ms, sep) {
  const pad = (n, w) => String(n).padStart(w, "0");
  const hours = Math.floor(ms / 3600000);
  const minutes = Math.floor((ms % 3600000) / 60000);
  const secs = Math.floor((ms % 60000) / 1000);
  return `${pad(hours, 2)}:${pad(minutes, 2)}:${pad(secs, 2)}${sep}${pad(ms % 1000, 3)}`;
}

/** One cue per segment, never overlapping or reversed (formats.py's _cues). */
function cues(body) {
  const out = [];
  let previousEnd = 0;
  for (const segment of body.segments || []) {
    const text = segment.text.split(/\s+/).filter(Boolean).join(" ");
    if (!text) continue;
    const start = Math.max(toMs(segment.start), previousEnd);
    const end = Math.max(toMs(segment.end), start);
    out.push([start, end, text]);
    previousEnd = end;
  }
  return out;
}

const vttEscape = (text) => text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");

const RENDERERS = {
  text: (body) => `${body.text}\n`,
  json: (body) => `${JSON.stringify(body, null, 2)}\n`,
  srt: (body) =>
    cues(body)
      .map(([s, e, t], i) => `${i + 1}\n${clock(s, ",")} --> ${clock(e, ",")}\n${t}\n`)
      .join("\n"),
  vtt: (body) =>
    "WEBVTT\n" +
    cues(body).map(([s, e, t]) => `\n${clock(s, ".")} --> ${clock(e, ".")}\n${vttEscape(t)}\n`).join(""),
  ctm: (body, audioName) => {
    const name = audioName.replace(/\s/g, "_") || "audio";
    return (body.words || [])
      .map((w) => `${name} 0 ${fixed2(w.start)} ${fixed2(w.end - w.start)} ${w.word} ${fixed2(w.confidence)}`)
      .join("\n");
  },
};

export const FILE_TYPES = {
  text: ["txt", "text/plain"],
  srt: ["srt", "application/x-subrip"],
  vtt: ["vtt", "text/vtt"],
  json: ["json", "application/json"],
  ctm: ["ctm", "text/plain"],
};

/** The transcript as `format` (text, srt, vtt, json or ctm). */
export function renderAs(format, body, audioName) {
  return RENDERERS[format](body, audioName);
}
