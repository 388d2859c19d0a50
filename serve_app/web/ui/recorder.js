// Microphone takes: MediaRecorder (webm/opus where the browser has it) plus a level
// meter from an AnalyserNode, so a person sees that the microphone hears them.

const MIME_TYPES = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm", "audio/mp4"];

/** The microphone's raw signal: echo cancellation, noise suppression and gain control
 * are tuned for calls, and their pumping at the start of a take costs ASR words. */
export async function openMicrophone() {
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (err) {
    throw new Error(`The microphone is not available: ${err.message || err.name}.`);
  }
}

/** The largest absolute sample, 0..1: what the level meters show. */
export function peak(samples) {
  let top = 0;
  for (const s of samples) top = Math.max(top, Math.abs(s));
  return Math.min(1, top);
}

export class Recorder {
  constructor({ onLevel, onTick }) {
    this.onLevel = onLevel;
    this.onTick = onTick;
    this.stream = null;
  }

  get mimeType() {
    return MIME_TYPES.find((t) => window.MediaRecorder?.isTypeSupported(t)) || "";
  }

  /** Ask for the microphone and start recording; throws with a readable message. */
  async start() {
    if (!navigator.mediaDevices?.getUserMedia || !window.MediaRecorder) {
      throw new Error("This browser cannot record audio here (it needs https or localhost).");
    }
    this.stream = await openMicrophone();
    this.chunks = [];
    this.recorder = new MediaRecorder(this.stream, this.mimeType ? { mimeType: this.mimeType } : {});
    this.recorder.ondataavailable = (e) => e.data.size && this.chunks.push(e.data);
    this.recorder.start(250);
    this.started = performance.now();
    this.meter();
  }

  meter() {
    this.audio = new AudioContext();
    const analyser = this.audio.createAnalyser();
    analyser.fftSize = 1024;
    this.audio.createMediaStreamSource(this.stream).connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    const tick = () => {
      if (!this.recorder || this.recorder.state !== "recording") return;
      analyser.getFloatTimeDomainData(samples);
      this.onLevel(peak(samples));
      this.onTick((performance.now() - this.started) / 1000);
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  }

  /** Stop; resolves with the take as one Blob and its file name. */
  stop() {
    return new Promise((resolve) => {
      this.recorder.onstop = () => {
        const type = this.recorder.mimeType || this.mimeType || "audio/webm";
        const blob = new Blob(this.chunks, { type });
        const extension = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
        this.stream.getTracks().forEach((t) => t.stop());
        this.audio.close();
        this.onLevel(0);
        this.recorder = null;
        resolve({ blob, name: `recording.${extension}` });
      };
      this.recorder.stop();
    });
  }
}
