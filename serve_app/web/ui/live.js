// Live captions: the microphone streamed over the realtime WebSocket in OpenAI's
// Realtime transcription protocol (PCM16 at 24 kHz from an AudioWorklet), with the
// server's VAD ending turns. Events go to the page as they come.
import { apiBase, settings } from "./api.js";
import { openMicrophone, peak } from "./recorder.js";

const RATE = 24000;
const STOP_WAIT_MS = 15000;

/** ws(s)://<API base>/v1/realtime?intent=transcription */
export function realtimeUrl() {
  const url = new URL("v1/realtime", apiBase());
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("intent", "transcription");
  return url.href;
}

/** Float samples in [-1, 1] as base64 little-endian PCM16. */
function pcm16Base64(floats) {
  const pcm = new Int16Array(floats.length);
  for (let i = 0; i < floats.length; i++) {
    const s = Math.max(-1, Math.min(1, floats[i]));
    pcm[i] = s < 0 ? s * 32768 : s * 32767;
  }
  const bytes = new Uint8Array(pcm.buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export class LiveCaptions {
  /** onEvent(event) for every server event; onLevel(0..1); onClosed(message|null). */
  constructor({ onEvent, onLevel, onClosed }) {
    this.onEvent = onEvent;
    this.onLevel = onLevel;
    this.onClosed = onClosed;
    this.socket = null;
    this.openItems = new Set();
    this.stopping = null;
    this.stopAnswered = false;
  }

  get running() {
    return this.socket !== null;
  }

  /** Open the session and the microphone; throws with a readable message. */
  async start(transcription) {
    if (!navigator.mediaDevices?.getUserMedia || !window.AudioWorkletNode) {
      throw new Error("This browser cannot stream the microphone here (it needs https or localhost).");
    }
    this.openItems = new Set();
    this.socket = await this.connect();
    try {
      await this.startCapture();
    } catch (err) {
      this.socket.close();
      this.socket = null;
      throw err;
    }
    this.send({
      type: "session.update",
      session: {
        type: "transcription",
        audio: {
          input: {
            format: { type: "audio/pcm", rate: RATE },
            transcription,
            turn_detection: { type: "server_vad", silence_duration_ms: 500 },
          },
        },
      },
    });
    this.source.connect(this.tap);
  }

  connect() {
    const url = realtimeUrl();
    const protocols = ["realtime"];
    if (settings.apiKey) protocols.push(`openai-insecure-api-key.${settings.apiKey}`);
    return new Promise((resolve, reject) => {
      let socket;
      try {
        socket = new WebSocket(url, protocols);
      } catch (err) {
        reject(new Error(`Cannot open a live session at ${url}: ${err.message}`));
        return;
      }
      let opened = false;
      let lastError = null;
      socket.onmessage = (message) => {
        const event = JSON.parse(message.data);
        if (event.type === "error") lastError = event.error;
        this.track(event);
        if (!opened && event.type === "session.created") {
          opened = true;
          resolve(socket);
        }
        this.onEvent(event);
      };
      socket.onclose = (close) => {
        const why = lastError?.message || close.reason;
        if (!opened) {
          reject(
            new Error(
              why
                ? `The server refused the live session: ${why}`
                : `Could not open a live session at ${url}: the server refused it (a missing ` +
                    "or wrong API key) or cannot be reached."
            )
          );
          return;
        }
        if (this.socket !== socket) return; // stopped by the page, or an older session
        this.shutDown();
        this.onClosed(close.code === 1000 || close.code === 1005 ? null : why || `closed (${close.code})`);
      };
    });
  }

  async startCapture() {
    this.stream = await openMicrophone();
    this.audio = new AudioContext({ sampleRate: RATE });
    await this.audio.audioWorklet.addModule(new URL("./pcm-worklet.js", import.meta.url));
    this.source = this.audio.createMediaStreamSource(this.stream);
    this.tap = new AudioWorkletNode(this.audio, "pcm-tap");
    this.tap.port.onmessage = ({ data }) => {
      this.onLevel(peak(data));
      this.send({ type: "input_audio_buffer.append", audio: pcm16Base64(data) });
    };
    // A silent path to the output keeps the graph (and so the tap) running.
    const mute = this.audio.createGain();
    mute.gain.value = 0;
    this.tap.connect(mute).connect(this.audio.destination);
  }

  send(event) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(event));
  }

  /** Turns committed and not yet transcribed; and the stop's commit answered. */
  track(event) {
    if (event.type === "input_audio_buffer.committed") {
      this.openItems.add(event.item_id);
      if (this.stopping) this.stopAnswered = true;
    } else if (/transcription\.(completed|failed)$/.test(event.type)) {
      this.openItems.delete(event.item_id);
    } else if (event.type === "error" && event.error.event_id === "stop") {
      this.stopAnswered = true; // nothing was left to commit
    }
    if (this.stopping && this.stopAnswered && this.openItems.size === 0) this.stopping();
  }

  /** Stop the microphone, commit what is left, wait for every open turn's final, close. */
  async stop() {
    const socket = this.socket;
    if (!socket) return;
    this.closeMicrophone();
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, STOP_WAIT_MS);
      this.stopAnswered = false;
      this.stopping = () => {
        clearTimeout(timer);
        resolve();
      };
      this.send({ type: "input_audio_buffer.commit", event_id: "stop" });
    });
    this.stopping = null;
    this.socket = null;
    socket.close(1000);
  }

  closeMicrophone() {
    this.stream?.getTracks().forEach((t) => t.stop());
    this.audio?.close();
    this.stream = this.audio = null;
    this.onLevel(0);
  }

  shutDown() {
    this.closeMicrophone();
    this.socket = null;
  }
}
