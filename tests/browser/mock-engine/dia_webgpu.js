// A JavaScript stand-in for the wasm engine (same exports as `wasm-bindgen --target web` output), for
// checking the worker, store, player and package without the real wasm: `tests/browser/run --mock`.
// It validates tensors like the engine (names from the config, byte sizes), folds every tensor into a
// checksum, and "generates" a deterministic tone from the text, options and checksum in timed chunks.

const DTYPE_BYTES = { F32: 4, F16: 2, BF16: 2, U32: 4 };
const NUMERICS = ['f32', 'f16w', 'q8', 'q4'];
const EMBEDDINGS = new Set(['model.encoder.embedding.weight', 'model.decoder.embeddings.embed.weight']);
const halfOf = (name) => /^(.*)\.(qweight|scales)$/.exec(name);

/** The real engine's storedTensors, in shapes and dtypes (groups of 32; q4 keeps attention at q8); the bytes are a
 *  deterministic digest of the input, not a quantization. */
export function storedTensors(name, dtype, shape, bytes, numerics) {
  if (!NUMERICS.includes(numerics)) throw new Error(`unknown numerics ${numerics}`);
  check(name, dtype, shape, bytes);
  if (halfOf(name)) return [{ name, dtype, shape: Uint32Array.from(shape), bytes: Uint8Array.from(bytes) }];
  const digest = (n) => Uint8Array.from({ length: n }, (_, i) => bytes[(i * 7919) % bytes.length] ^ (i & 0xff));
  const numel = [...shape].reduce((a, d) => a * d, 1);
  const one = (dt) => [{ name, dtype: dt, shape: Uint32Array.from(shape), bytes: digest(numel * DTYPE_BYTES[dt]) }];
  if (shape.length !== 2) return one('F32');
  if (EMBEDDINGS.has(name)) return one(numerics === 'f32' ? 'F32' : 'F16');
  if (numerics === 'f32') return one('F32');
  if (numerics === 'f16w') return one('F16');
  const [rows, cols] = shape;
  const groups = Math.ceil(cols / 32);
  const words = numerics === 'q8' || /_attention\./.test(name) ? 8 : 4;
  const base = name.replace(/\.weight$/, '');
  return [
    { name: `${base}.qweight`, dtype: 'U32', shape: Uint32Array.from([rows, groups * words]), bytes: digest(rows * groups * words * 4) },
    { name: `${base}.scales`, dtype: 'F16', shape: Uint32Array.from([rows, groups]), bytes: digest(rows * groups * 2) },
  ];
}

function modelNames(cfg) {
  const names = ['model.encoder.embedding.weight', 'model.encoder.norm.weight', 'model.decoder.embeddings.embed.weight', 'model.decoder.norm.weight', 'logits_dense.weight'];
  for (let i = 0; i < cfg.encoder_config.num_hidden_layers; i++) {
    const p = `model.encoder.layers.${i}.`;
    for (const n of ['pre_sa_norm', 'self_attention.q_proj', 'self_attention.k_proj', 'self_attention.v_proj', 'self_attention.o_proj', 'post_sa_norm', 'mlp.gate_up_proj', 'mlp.down_proj']) names.push(`${p}${n}.weight`);
  }
  for (let i = 0; i < cfg.decoder_config.num_hidden_layers; i++) {
    const p = `model.decoder.layers.${i}.`;
    for (const n of ['pre_sa_norm', 'self_attention.q_proj', 'self_attention.k_proj', 'self_attention.v_proj', 'self_attention.o_proj', 'pre_ca_norm', 'cross_attention.q_proj', 'cross_attention.k_proj', 'cross_attention.v_proj', 'cross_attention.o_proj', 'pre_mlp_norm', 'mlp.gate_up_proj', 'mlp.down_proj']) names.push(`${p}${n}.weight`);
  }
  return names;
}

/** Adds a hash of one tensor's bytes to `sum` (order-independent, as tensors arrive in any order). */
function fold(sum, bytes) {
  let h = 0;
  for (let i = 0; i < bytes.length; i += 97) h = (Math.imul(h, 31) + bytes[i]) | 0;
  return (sum + h) | 0;
}

function check(name, dtype, shape, bytes) {
  const size = DTYPE_BYTES[dtype];
  if (!size) throw new Error(`tensor ${name}: unknown dtype ${dtype}`);
  const numel = [...shape].reduce((a, d) => a * d, 1);
  if (numel * size !== bytes.length) throw new Error(`tensor ${name}: ${bytes.length} bytes for shape [${[...shape]}] ${dtype}`);
}

export default async function init() {}

export class DiaEngine {
  static async create(numerics) {
    if (!NUMERICS.includes(numerics)) throw new Error(`unknown numerics ${numerics}`);
    if (!navigator.gpu || !(await navigator.gpu.requestAdapter())) throw new Error('WebGPU is not available here');
    return new DiaEngine(numerics);
  }

  constructor(numerics) {
    this.numerics = numerics;
    this.checksum = 0;
    this.model = null;
    this.codec = null;
    this.cancelled = false;
    this.busy = false;
  }

  adapterInfo() {
    return `mock engine (${this.numerics})`;
  }

  beginModel(configJson) {
    this.pending = new Set(modelNames(JSON.parse(configJson)));
    this.model = null;
  }

  putModelTensor(name, dtype, shape, bytes) {
    if (!this.pending) throw new Error('no model is being loaded: call beginModel first');
    const half = halfOf(name);
    const base = half ? `${half[1]}.weight` : name;
    if (!this.pending.has(base)) throw new Error(`unexpected tensor ${name}`);
    check(name, dtype, shape, bytes);
    this.checksum = fold(this.checksum, bytes);
    if (half) {
      // The first half waits for the second, as in the engine.
      this.halves ??= new Set();
      if (!this.halves.has(base)) return void this.halves.add(base);
      this.halves.delete(base);
    }
    this.pending.delete(base);
  }

  memory() {
    const bytes = 1e6 * (this.numerics === 'f32' ? 8 : this.numerics === 'f16w' ? 4 : this.numerics === 'q8' ? 2 : 1);
    return { allocated: bytes, peak: bytes };
  }

  modelMissing() {
    return [...this.pending];
  }

  finishModel() {
    if (this.pending.size) throw new Error(`missing tensor ${[...this.pending][0]} (and ${this.pending.size - 1} more)`);
    this.model = true;
  }

  beginCodec(configJson, withEncoder) {
    JSON.parse(configJson);
    this.codecTensors = 0;
    this.withEncoder = withEncoder;
  }

  putCodecTensor(name, dtype, shape, bytes) {
    check(name, dtype, shape, bytes);
    if (!this.withEncoder && name.startsWith('encoder.')) return;
    this.checksum = fold(this.checksum, bytes);
    this.codecTensors++;
  }

  finishCodec() {
    if (this.codecTensors === 0) throw new Error('no codec tensors');
    this.codec = true;
  }

  async generate(text, options = {}, promptPcm, onChunk, promptTranscript, onProgress) {
    if (!this.model || !this.codec) throw new Error('no model loaded');
    if (this.lost) throw Object.assign(new Error('the GPU device was lost: destroyed'), { code: 'device-lost' });
    if (this.busy) throw new Error('a generation is already running');
    // The real engine's refusals of a text (crate/src/dia/segment.rs), with its limits: 256 KiB, one segment up to
    // 160 bytes; a longer text in segments of about 110 bytes (roughly what the real splitter's packing gives).
    const bytes = new TextEncoder().encode(text).length;
    if (bytes > 256 * 1024) throw Object.assign(new Error(`the script is ${bytes} bytes long; at most 262144 bytes are taken`), { code: 'script-too-long', bytes, limit: 256 * 1024 });
    if (text.replace(/\[S[12]\]/g, '').trim() === '') throw Object.assign(new Error('the script has nothing to speak'), { code: 'nothing-to-speak' });
    const segments = bytes <= 160 ? 1 : Math.ceil(bytes / 110);
    if (segments > 1 && promptPcm && promptTranscript === undefined) {
      throw Object.assign(new Error(`the script is ${segments} segments long: a voice prompt needs its transcript`), { code: 'voice-needs-transcript', segments });
    }
    // The test-only faults of the real engine, as they surface there: a panic logs its text and traps in the
    // task polling the generation (whose promise never settles); a lost device rejects with code 'device-lost'.
    if (options.testHook === 'panic') {
      await new Promise((r) => setTimeout(r, 15));
      console.error('panicked at mock-engine/dia_webgpu.js:\nforced panic (test-only generate option testHook: "panic")\n\nStack:\n\n(mock)');
      queueMicrotask(() => {
        throw new WebAssembly.RuntimeError('unreachable');
      });
      return new Promise(() => {});
    }
    if (options.testHook === 'lose-device') {
      await new Promise((r) => setTimeout(r, 15));
      this.lost = true;
      throw Object.assign(new Error('the GPU device was lost: destroyed'), { code: 'device-lost' });
    }
    this.busy = true;
    this.cancelled = false;
    try {
      return await this.tone(text, options, promptPcm, promptTranscript, segments, onChunk, onProgress);
    } finally {
      this.busy = false;
    }
  }

  /** The "generation": a tone from the text, options and checksum, in timed chunks of 8 frames per segment. */
  async tone(text, options, promptPcm, promptTranscript, segments, onChunk, onProgress) {
    const started = performance.now();
    const steps = Math.min(options.maxNewTokens ?? 86, 10000);
    let seed = this.checksum ^ (options.seed ?? 0);
    for (const c of (promptTranscript ?? '') + text) seed = (Math.imul(seed, 33) + c.charCodeAt(0)) | 0;
    const freq = 200 + (Math.abs(seed) % 400) + (promptPcm ? 50 : 0);
    const framesPerChunk = 8;
    let samples = 0;
    const progress = (segment, rows) =>
      onProgress?.({ segment, segments, rows, estimatedRows: steps, framesOut: samples / 512, audioSeconds: samples / 44100 });
    for (let segment = 0; segment < segments; segment++) {
      if (this.cancelled) throw new Error('generation cancelled');
      progress(segment, 0);
      for (let step = 0; step < steps; step += framesPerChunk) {
        await new Promise((r) => setTimeout(r, 15));
        if (this.cancelled) throw new Error('generation cancelled');
        const n = 512 * Math.min(framesPerChunk, steps - step);
        const pcm = new Float32Array(n);
        for (let i = 0; i < n; i++) pcm[i] = 0.2 * Math.sin((2 * Math.PI * freq * (samples + i)) / 44100);
        samples += n;
        progress(segment, Math.min(step + framesPerChunk, steps));
        onChunk(pcm);
      }
    }
    return { samples, steps: steps * segments, seconds: (performance.now() - started) / 1000, segments };
  }

  /** The real engine's generateBatch: its refusals of a list (codes, list index), texts handed out in list order one
   *  batch at a time; each text's audio is the mock generate's of the text it reads (greedy parity holds here too). */
  async generateBatch(texts, options = {}, promptPcm, onText, promptTranscript, onProgress) {
    if (!this.model || !this.codec) throw new Error('no model loaded');
    if (this.busy) throw new Error('a generation is already running');
    if (texts.length === 0) throw Object.assign(new Error('the list of texts is empty'), { code: 'empty-list' });
    const read = texts.map((t, index) => {
      if (t.trim() === '') throw Object.assign(new Error(`text ${index} of the list: the text is empty`), { code: 'nothing-to-speak', index });
      const text = promptTranscript?.trim() ? `${promptTranscript.trim()} ${t}` : t;
      const bytes = new TextEncoder().encode(text.replace(/\[S[12]\]/g, 'S')).length; // a speaker tag is one token byte
      if (bytes > 1024) throw Object.assign(new Error(`text ${index} of the list: ${bytes} bytes, at most 1024`), { code: 'text-too-long', index, bytes, limit: 1024 });
      return text;
    });
    const size = Math.min(options.batchSize ?? 8, texts.length);
    const started = performance.now();
    const batches = Math.ceil(texts.length / size);
    let steps = 0;
    let samples = 0;
    this.busy = true;
    this.cancelled = false;
    try {
      for (let batch = 0; batch < batches; batch++) {
        if (this.cancelled) throw new Error('generation cancelled');
        const firstItem = batch * size;
        const items = read.slice(firstItem, firstItem + size);
        const maxRows = options.maxNewTokens ?? 86;
        const report = (rows) => onProgress?.({ batch, batches, firstItem, items: items.length, rows, maxRows, done: firstItem });
        report(0);
        const outs = [];
        for (const text of items) {
          const chunks = [];
          const r = await this.tone(text, options, promptPcm, undefined, 1, (pcm) => chunks.push(pcm));
          const pcm = new Float32Array(r.samples);
          let at = 0;
          for (const c of chunks) {
            pcm.set(c, at);
            at += c.length;
          }
          outs.push({ pcm, steps: r.steps });
          report(Math.max(...outs.map((o) => o.steps)));
        }
        steps += Math.max(...outs.map((o) => o.steps));
        for (const [b, o] of outs.entries()) {
          if (this.cancelled) throw new Error('generation cancelled');
          samples += o.pcm.length;
          onText(firstItem + b, o.pcm, o.steps);
        }
      }
    } finally {
      this.busy = false;
    }
    return { texts: texts.length, batches, batchSize: size, steps, samples, seconds: (performance.now() - started) / 1000 };
  }

  cancel() {
    if (this.busy) this.cancelled = true;
  }
}
