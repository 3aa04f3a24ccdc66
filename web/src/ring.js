// A single-producer single-consumer ring of f32 samples in a SharedArrayBuffer: the page writes, the
// AudioWorklet reads. Header (Int32, Atomics): [0] samples written, [1] samples read — running counts
// that wrap at 2^32 (differences are taken with `| 0`); capacity is a power of two.
const HEADER_BYTES = 16;

export class PcmRing {
  static create(capacity = 1 << 20) {
    if (capacity & (capacity - 1)) throw new RangeError('ring capacity must be a power of two');
    return new PcmRing(new SharedArrayBuffer(HEADER_BYTES + 4 * capacity));
  }

  constructor(sab) {
    this.sab = sab;
    this.counts = new Int32Array(sab, 0, 4);
    this.data = new Float32Array(sab, HEADER_BYTES);
    this.capacity = this.data.length;
    this.mask = this.capacity - 1;
  }

  get written() {
    return Atomics.load(this.counts, 0);
  }

  get read() {
    return Atomics.load(this.counts, 1);
  }

  /** Producer: copies as much of `pcm[from..]` as fits; returns how many samples it wrote. */
  write(pcm, from = 0) {
    const w = this.written;
    const space = this.capacity - ((w - this.read) | 0);
    const n = Math.min(space, pcm.length - from);
    if (n <= 0) return 0;
    const at = w & this.mask;
    const first = Math.min(n, this.capacity - at);
    this.data.set(pcm.subarray(from, from + first), at);
    if (n > first) this.data.set(pcm.subarray(from + first, from + n), 0);
    Atomics.store(this.counts, 0, (w + n) | 0);
    return n;
  }

  /** Consumer: publishes its read position (a running count). */
  commit(read) {
    Atomics.store(this.counts, 1, read);
  }
}
