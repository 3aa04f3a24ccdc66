// The page side of the AudioWorklet player: one node per AudioContext, one playback at a time.
import { PcmRing } from './ring.js';

export const SAMPLE_RATE = 44100;

const modules = new WeakMap(); // AudioContext → Promise of addModule

/** Whether this page can share memory with the worklet (SharedArrayBuffer needs cross-origin isolation). */
export function canShareMemory() {
  return typeof SharedArrayBuffer === 'function' && globalThis.crossOriginIsolated === true;
}

export class PcmPlayer {
  /**
   * @param {BaseAudioContext} context
   * @param {{ srcRate?: number, shared?: boolean, capacity?: number }} options
   *   shared: use a SharedArrayBuffer ring (default when cross-origin isolated), else transfer chunks.
   */
  static async create(context, { srcRate = SAMPLE_RATE, shared = canShareMemory(), capacity = 1 << 20 } = {}) {
    if (!modules.has(context)) modules.set(context, context.audioWorklet.addModule(new URL('./player-worklet.js', import.meta.url)));
    await modules.get(context);
    const ring = shared ? PcmRing.create(capacity) : null;
    const node = new AudioWorkletNode(context, 'dia-pcm-player', {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { srcRate, sab: ring ? ring.sab : null },
    });
    node.connect(context.destination);
    return new PcmPlayer(context, node, ring, srcRate);
  }

  #node;
  #ring;
  #streams = 0;
  #playback = null;

  constructor(context, node, ring, srcRate) {
    this.context = context;
    this.srcRate = srcRate;
    this.shared = ring !== null;
    this.#node = node;
    this.#ring = ring;
    node.port.onmessage = ({ data }) => this.#playback?.onMessage(data);
  }

  /**
   * Starts a new stream (stopping the previous one). Returns a Playback:
   * push(pcm) queues samples, end() marks the end, stop() silences it; `finished` resolves with
   * { consumed, underruns, stopped } once the last sample has played (or at stop()).
   */
  start({ onPosition } = {}) {
    this.#playback?.stop();
    const playback = new Playback(this.#node.port, this.#ring, ++this.#streams, this.srcRate, onPosition);
    this.#playback = playback;
    return playback;
  }

  close() {
    this.#playback?.stop();
    this.#node.disconnect();
  }
}

class Playback {
  #port;
  #ring;
  #pending = []; // ring mode: [pcm, offset] not yet written
  #ending = false;
  #endSent = false;
  #resolve;

  constructor(port, ring, stream, srcRate, onPosition) {
    this.stream = stream;
    this.srcRate = srcRate;
    this.pushed = 0;
    this.consumed = 0;
    this.underruns = 0;
    this.done = false;
    this.onPosition = onPosition;
    this.#port = port;
    this.#ring = ring;
    this.finished = new Promise((resolve) => (this.#resolve = resolve));
    port.postMessage({ type: 'start', stream, from: ring ? ring.written : 0 });
    if (ring) ring.commit(ring.written); // nothing of an earlier stream counts as unread
  }

  push(pcm) {
    if (this.done || this.#ending) return;
    this.pushed += pcm.length;
    if (this.#ring) {
      this.#pending.push([pcm, 0]);
      this.#drain();
    } else {
      const data = new Float32Array(pcm);
      this.#port.postMessage({ type: 'pcm', stream: this.stream, data }, [data.buffer]);
    }
  }

  end() {
    if (this.done || this.#ending) return;
    this.#ending = true;
    this.#drain();
  }

  stop() {
    if (this.done) return;
    this.#port.postMessage({ type: 'stop', stream: this.stream });
    this.#finish(true);
  }

  /** Ring mode: writes what fits now; the rest waits for the worklet's next position report. */
  #drain() {
    while (this.#ring && this.#pending.length) {
      const entry = this.#pending[0];
      entry[1] += this.#ring.write(entry[0], entry[1]);
      if (entry[1] < entry[0].length) break;
      this.#pending.shift();
    }
    if (this.#ending && !this.#endSent && this.#pending.length === 0) {
      this.#endSent = true;
      this.#port.postMessage({ type: 'end', stream: this.stream });
    }
  }

  #finish(stopped) {
    this.done = true;
    this.#pending = [];
    this.#resolve({ consumed: this.consumed, pushed: this.pushed, underruns: this.underruns, stopped });
  }

  onMessage(m) {
    if (m.stream !== this.stream || this.done) return;
    this.consumed = m.consumed;
    this.underruns = m.underruns;
    this.onPosition?.({ samples: m.consumed, seconds: m.consumed / this.srcRate, underruns: m.underruns });
    if (m.type === 'ended') this.#finish(false);
    else this.#drain();
  }
}
