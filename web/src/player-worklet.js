// AudioWorklet processor 'dia-pcm-player': plays one stream of 44.1 kHz mono PCM at the context's rate.
// Input: a PcmRing in a SharedArrayBuffer (cross-origin isolated pages) or transferred chunks on the port.
// Messages in:  { type: 'start', stream, from? }  { type: 'pcm', stream, data }  { type: 'end', stream }
//               { type: 'stop', stream }
// Messages out: { type: 'position', stream, consumed, underruns, state } about every 20 ms while playing,
//               { type: 'ended', stream, consumed, underruns } once the last sample has played,
//               { type: 'stopped', ... } in answer to 'stop'.
// Resampling is linear interpolation (exact pass-through when the rates match). When the input runs dry
// before its end the output fades to silence over FADE samples and fades back in once PREBUFFER seconds
// are queued, so underruns never click.
import { PcmRing } from './ring.js';

const FADE = 128;
const PREBUFFER = 0.1;
const REPORT_EVERY = 8; // render quanta

class DiaPcmPlayer extends AudioWorkletProcessor {
  constructor({ processorOptions }) {
    super();
    const { srcRate, sab } = processorOptions;
    this.ring = sab ? new PcmRing(sab) : null;
    this.step = srcRate / sampleRate;
    // Never wait for more than half a ring: the producer cannot queue beyond its capacity.
    this.resumeAt = Math.min(Math.ceil(srcRate * PREBUFFER), this.ring ? this.ring.capacity / 2 : Infinity);
    this.state = 'idle';
    this.stream = -1;
    this.port.onmessage = ({ data }) => this.onMessage(data);
  }

  onMessage(m) {
    if (m.type === 'start') {
      this.begin(m.stream, m.from ?? 0);
      return;
    }
    if (m.stream !== this.stream) return;
    if (m.type === 'pcm') {
      this.chunks.push(m.data);
      this.queued += m.data.length;
    } else if (m.type === 'end') {
      this.ended = true;
    } else if (m.type === 'stop') {
      this.report('stopped');
      this.state = 'idle';
      this.chunks = [];
    }
  }

  begin(stream, from) {
    this.stream = stream;
    this.state = 'buffering';
    this.read = from; // ring mode: running count of samples read
    this.chunks = []; // transfer mode: queued chunks
    this.chunkPos = 0;
    this.queued = 0;
    this.ended = false;
    this.padded = false;
    this.consumed = 0;
    this.underruns = 0;
    // Interpolation state: output = cur + frac·(nxt − cur); frac ≥ 1 means "shift in the next sample".
    this.cur = 0;
    this.nxt = 0;
    this.frac = 2; // two shifts before the first output: cur = sample 0, nxt = sample 1
    this.gain = 1;
    this.lastOut = 0;
    this.fadeOut = FADE;
    this.blocks = 0;
    this.reported = 0;
  }

  available() {
    return this.ring ? (this.ring.written - this.read) | 0 : this.queued;
  }

  pop() {
    let v;
    if (this.ring) {
      v = this.ring.data[this.read & this.ring.mask];
      this.read = (this.read + 1) | 0;
    } else {
      const c = this.chunks[0];
      v = c[this.chunkPos++];
      if (this.chunkPos === c.length) {
        this.chunks.shift();
        this.chunkPos = 0;
      }
      this.queued--;
    }
    this.avail--;
    this.consumed++;
    return v;
  }

  /** The next output sample; null on underrun, undefined once the stream has fully played. */
  next() {
    while (this.frac >= 1) {
      if (this.avail > 0) {
        this.cur = this.nxt;
        this.nxt = this.pop();
      } else if (this.ended) {
        if (this.padded) return undefined;
        this.cur = this.nxt;
        this.nxt = 0;
        this.padded = true;
      } else {
        return null;
      }
      this.frac -= 1;
    }
    const y = this.cur + this.frac * (this.nxt - this.cur);
    this.frac += this.step;
    return y;
  }

  report(type) {
    const { stream, consumed, underruns, state } = this;
    this.port.postMessage({ type, stream, consumed, underruns, state });
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (this.state === 'idle' || !out) return true;
    this.avail = this.available();
    for (let i = 0; i < out.length; i++) {
      if (this.state !== 'playing') {
        if (this.avail >= this.resumeAt || this.ended) {
          if (this.state === 'underrun') this.gain = 0;
          this.state = 'playing';
        } else {
          // Silence, reached by a short ramp from the last sample played.
          out[i] = this.fadeOut < FADE ? this.lastOut * (1 - this.fadeOut++ / FADE) : 0;
          continue;
        }
      }
      const y = this.next();
      if (y === undefined) {
        this.state = 'finished';
        out.fill(0, i);
        break;
      }
      if (y === null) {
        this.state = 'underrun';
        this.underruns++;
        this.fadeOut = 0;
        i--; // render this frame as the first of the fade
        continue;
      }
      if (this.gain < 1) this.gain = Math.min(1, this.gain + 1 / FADE);
      out[i] = y * this.gain;
      this.lastOut = out[i];
    }
    if (this.ring) this.ring.commit(this.read);
    if (this.state === 'finished') {
      this.report('ended');
      this.state = 'idle';
    } else if (++this.blocks % REPORT_EVERY === 0 && this.consumed !== this.reported) {
      this.reported = this.consumed;
      this.report('position');
    }
    return true;
  }
}

registerProcessor('dia-pcm-player', DiaPcmPlayer);
