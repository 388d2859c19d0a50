// AudioWorklet processor: hands the microphone's samples to the page in 100 ms blocks
// (the audio thread must not block, so it only copies; the page encodes and sends).
class PcmTap extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(Math.round(sampleRate / 10));
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0]?.[0];
    for (let i = 0; input && i < input.length; ) {
      const n = Math.min(input.length - i, this.block.length - this.filled);
      this.block.set(input.subarray(i, i + n), this.filled);
      this.filled += n;
      i += n;
      if (this.filled === this.block.length) {
        this.port.postMessage(this.block.slice());
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm-tap", PcmTap);
