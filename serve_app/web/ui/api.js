// Talking to reverb-serve: where it is, the key, and one transcription call that
// reports upload progress, streamed deltas and the final timed transcript.

const STORE = window.sessionStorage; // the tab only: never localStorage

export const settings = {
  get server() {
    return STORE.getItem("reverb.server") || "";
  },
  set server(value) {
    STORE.setItem("reverb.server", value.trim());
  },
  get apiKey() {
    return STORE.getItem("reverb.apiKey") || "";
  },
  set apiKey(value) {
    STORE.setItem("reverb.apiKey", value.trim());
  },
};

/** The API's base URL: the server field, else where this page was served from (so the
 * page works under any route prefix). */
export function apiBase() {
  const chosen = settings.server;
  const base = chosen ? new URL(chosen, window.location.href) : new URL(".", window.location.href);
  return base.href.endsWith("/") ? base.href : `${base.href}/`;
}

/** An error the page shows: what went wrong, in words a person can act on. */
export class ApiError extends Error {
  constructor(message, { status = 0, code = null, retryAfter = null } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

const HINTS = {
  401: "The server needs an API key: enter it under “Server and API key”.",
  413: "The file is larger or longer than this server accepts.",
  415: "That file is not audio the server can decode.",
  429: "Too many transcriptions from you at once; wait for one to finish.",
  503: "The server is busy.",
  504: "The transcription took longer than the server allows.",
};

function errorFrom(status, bodyText, retryAfter) {
  let message = "";
  let code = null;
  try {
    const body = JSON.parse(bodyText);
    message = body?.error?.message || "";
    code = body?.error?.code || null;
  } catch {
    message = bodyText ? bodyText.slice(0, 300) : "";
  }
  const hint = HINTS[status] || `The server answered ${status}.`;
  const wait = retryAfter ? ` Try again in ${retryAfter} s.` : "";
  const detail = message ? `\n${message}` : "";
  return new ApiError(`${hint}${wait} (HTTP ${status}${code ? `, ${code}` : ""})${detail}`, {
    status,
    code,
    retryAfter: retryAfter ? Number(retryAfter) : null,
  });
}

function unreachable(base) {
  return new ApiError(
    `Could not reach the server at ${base}. It may be down, or it does not allow this ` +
      "page's origin (its cors_origins)."
  );
}

function authHeaders() {
  return settings.apiKey ? { Authorization: `Bearer ${settings.apiKey}` } : {};
}

/** GET /v1/models: the served model's id (also tells whether the key works). */
export async function fetchModels() {
  const base = apiBase();
  let response;
  try {
    response = await fetch(`${base}v1/models`, { headers: authHeaders() });
  } catch {
    throw unreachable(base);
  }
  const text = await response.text();
  if (!response.ok) throw errorFrom(response.status, text, response.headers.get("Retry-After"));
  return JSON.parse(text).data.map((m) => m.id);
}

/** Parses server-sent events as they arrive in a growing response text. */
class EventReader {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.seen = 0;
    this.buffer = "";
  }

  feed(text) {
    this.buffer += text.slice(this.seen);
    this.seen = text.length;
    let end;
    while ((end = this.buffer.indexOf("\n\n")) >= 0) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) this.onEvent(JSON.parse(data));
    }
  }
}

/**
 * Transcribe `file` (a File or Blob) with `options` ({decoding_mode, verbatimicity}).
 * Calls onUpload(fraction) while the body goes up, onDelta(text) per streamed delta;
 * resolves with the verbose_json body (segments and words with confidences).
 * XMLHttpRequest, not fetch: fetch reports no upload progress.
 */
export function transcribe(file, fileName, options, { onUpload, onUploaded, onDelta }) {
  const base = apiBase();
  const form = new FormData();
  form.append("file", file, fileName);
  form.append("response_format", "verbose_json");
  form.append("timestamp_granularities[]", "word");
  form.append("timestamp_granularities[]", "segment");
  form.append("stream", "true");
  for (const [key, value] of Object.entries(options)) form.append(key, String(value));

  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    let final = null;
    let streamError = null;
    const reader = new EventReader((event) => {
      if (event.type === "transcript.text.delta") onDelta(event.delta);
      else if (event.type === "transcript.text.done") final = event.transcription;
      else if (event.error) streamError = event.error;
    });
    xhr.open("POST", `${base}v1/audio/transcriptions`);
    for (const [key, value] of Object.entries(authHeaders())) xhr.setRequestHeader(key, value);
    xhr.upload.onprogress = (e) => e.lengthComputable && onUpload(e.loaded / e.total);
    xhr.upload.onload = () => onUploaded();
    xhr.onprogress = () => xhr.status === 200 && reader.feed(xhr.responseText);
    xhr.onerror = () => reject(unreachable(base));
    xhr.onabort = () => reject(new ApiError("The transcription was cancelled."));
    xhr.onload = () => {
      if (xhr.status !== 200) {
        reject(errorFrom(xhr.status, xhr.responseText, xhr.getResponseHeader("Retry-After")));
        return;
      }
      reader.feed(xhr.responseText);
      if (streamError) {
        reject(new ApiError(`The transcription failed: ${streamError.message} (${streamError.code})`));
      } else if (!final) {
        reject(new ApiError("The server ended the stream without a transcript."));
      } else {
        resolve(final);
      }
    };
    xhr.send(form);
  });
}
