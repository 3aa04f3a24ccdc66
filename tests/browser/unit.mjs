// Unit checks in node, run before the browser tests by e2e.mjs: the AudioWorklet processor (with the
// AudioWorkletGlobalScope stubbed), the ring buffer, f16 rounding, safetensors parsing, range grouping,
// WAV encoding, and HubSource against the test server (ranges, retries, servers without ranges).
import { startServer } from './server.mjs';

const assert = (condition, message) => {
  if (!condition) throw new Error(message);
};

// ---------------------------------------------------------------- AudioWorklet processor

const posted = [];
let Processor = null;
globalThis.AudioWorkletProcessor = class {
  constructor() {
    this.port = { postMessage: (m) => posted.push(m), onmessage: null };
  }
};
globalThis.registerProcessor = (name, cls) => {
  Processor = cls;
};
await import('../../web/src/player-worklet.js');
const { PcmRing } = await import('../../web/src/ring.js');

function processor(rate, sab = null) {
  globalThis.sampleRate = rate;
  posted.length = 0;
  const p = new Processor({ processorOptions: { srcRate: 44100, sab } });
  p.port.onmessage({ data: { type: 'start', stream: 1, from: 0 } });
  return p;
}

const send = (p, m) => p.port.onmessage({ data: { stream: 1, ...m } });

/** Renders `blocks` render quanta; returns the concatenated output. */
function render(p, blocks) {
  const out = new Float32Array(128 * blocks);
  for (let b = 0; b < blocks; b++) {
    const block = new Float32Array(128);
    p.process([], [[block]]);
    out.set(block, 128 * b);
  }
  return out;
}

const sine = (n, freq, rate, from = 0) => Float32Array.from({ length: n }, (_, i) => 0.5 * Math.sin((2 * Math.PI * freq * (i + from)) / rate));
const ended = () => posted.find((m) => m.type === 'ended');
const maxStep = (x) => x.reduce((m, v, i) => (i ? Math.max(m, Math.abs(v - x[i - 1])) : 0), 0);

export const unitTests = [
  [
    'worklet at 44.1 kHz: bit-exact pass-through, consumes exactly what was pushed, reports the end',
    () => {
      const p = processor(44100);
      const input = sine(10007, 440, 44100);
      send(p, { type: 'pcm', data: input.slice(0, 6000) });
      send(p, { type: 'pcm', data: input.slice(6000) });
      send(p, { type: 'end' });
      const out = render(p, 100);
      for (let i = 0; i < input.length; i++) assert(out[i] === input[i], `sample ${i}: ${out[i]} ≠ ${input[i]}`);
      assert(out.subarray(input.length).every((v) => v === 0), 'silence after the end');
      assert(ended()?.consumed === input.length, `ended: ${JSON.stringify(ended())}`);
    },
  ],
  [
    'worklet at 48 kHz: a 440 Hz sine comes out as the same sine at 48 kHz, all samples consumed',
    () => {
      const p = processor(48000);
      const input = sine(44100, 440, 44100);
      send(p, { type: 'pcm', data: input });
      send(p, { type: 'end' });
      const out = render(p, 400);
      const expectedLength = Math.round((input.length * 48000) / 44100);
      const produced = out.length - [...out].reverse().findIndex((v) => v !== 0);
      assert(Math.abs(produced - expectedLength) <= 2, `${produced} samples out, ${expectedLength} expected`);
      const ideal = sine(expectedLength - 2, 440, 48000);
      let signal = 0;
      let noise = 0;
      for (let i = 0; i < ideal.length; i++) {
        signal += ideal[i] ** 2;
        noise += (ideal[i] - out[i]) ** 2;
      }
      const snr = 10 * Math.log10(signal / noise);
      assert(snr > 40, `SNR ${snr.toFixed(1)} dB`);
      assert(ended()?.consumed === input.length, `consumed ${ended()?.consumed}`);
      return `SNR ${snr.toFixed(1)} dB`;
    },
  ],
  [
    'worklet underrun: fades to silence and back without a jump, counts it, still consumes everything',
    () => {
      const p = processor(44100);
      const level = Float32Array.from({ length: 3000 }, () => 0.5);
      send(p, { type: 'pcm', data: level });
      assert(render(p, 2).every((v) => v === 0), 'waits for 0.1 s of audio before starting');
      send(p, { type: 'pcm', data: level });
      const first = render(p, 150); // 6000 queued, 19200 rendered: runs dry
      assert(p.underruns === 1, `${p.underruns} underruns`);
      send(p, { type: 'pcm', data: level });
      send(p, { type: 'pcm', data: level });
      send(p, { type: 'end' });
      const second = render(p, 100);
      const all = Float32Array.from([...first, ...second]);
      const last = all.findLastIndex((v) => v !== 0); // the stream's own end is a step by design
      const step = maxStep(all.subarray(0, last + 1));
      assert(step <= 0.5 / 128 + 1e-6, `largest sample-to-sample step ${step} (a click)`);
      assert(ended()?.consumed === 12000 && ended()?.underruns === 1, JSON.stringify(ended()));
      return `largest step ${step.toFixed(5)}`;
    },
  ],
  [
    'worklet from a SharedArrayBuffer ring: wrap-around, producer waits for space, exact consumption',
    () => {
      const ring = PcmRing.create(1024);
      const p = processor(44100, ring.sab);
      const input = sine(20000, 1000, 44100);
      let written = 0;
      const out = [];
      while (written < input.length || !ended()) {
        written += ring.write(input, written);
        if (written === input.length && !p.ended) send(p, { type: 'end' });
        out.push(...render(p, 1));
        assert(out.length < 200000, 'stalled');
      }
      const start = out.findIndex((v) => v !== 0) - input.findIndex((v) => v !== 0); // the prebuffer wait
      for (let i = 0; i < input.length; i++) assert(out[start + i] === input[i], `sample ${i}`);
      assert(p.underruns === 0 && ended().consumed === input.length, `underruns ${p.underruns}, consumed ${ended().consumed}`);
      assert(ring.read === input.length, 'the read count is published');
      return `starts after ${start} samples with a 1024-sample ring`;
    },
  ],
  [
    'f16 rounding: nearest-even at ties, subnormals, overflow to infinity',
    async () => {
      const { f16FromNumber, toF16Bytes } = await import('../../worker/f16.js');
      const cases = [
        [1, 0x3c00], [-2, 0xc000], [65504, 0x7bff], [65519.99, 0x7bff], [65520, 0x7c00], [Infinity, 0x7c00],
        [2 ** -24, 0x0001], [2 ** -25, 0x0000], [3 * 2 ** -25, 0x0002], [2 ** -14, 0x0400], [2 ** -14 - 2 ** -25, 0x0400],
        [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [1 + 2 ** -11 + 2 ** -20, 0x3c01], [-0, 0x8000],
      ];
      for (const [x, bits] of cases) assert(f16FromNumber(x) === bits, `${x} → ${f16FromNumber(x).toString(16)}, want ${bits.toString(16)}`);
      const bf16 = new Uint8Array(new Uint16Array([0x3f80, 0xc040]).buffer); // 1, -3
      assert(String([...new Uint16Array(toF16Bytes(bf16, 'BF16', false).buffer)]) === String([0x3c00, 0xc200]), 'bf16 → f16');
    },
  ],
  [
    'safetensors headers: absolute ranges, size checks; adjacent small tensors grouped',
    async () => {
      const { parseHeader, headerLength } = await import('../../worker/safetensors.js');
      const { groupRanges } = await import('../../worker/loader.js');
      const json = JSON.stringify({ __metadata__: { format: 'pt' }, a: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] }, b: { dtype: 'BF16', shape: [5], data_offsets: [24, 34] } });
      const ts = parseHeader(new TextEncoder().encode(json), 'f.safetensors');
      assert(ts.length === 2 && ts[0].begin === 8 + json.length && ts[1].end === 8 + json.length + 34, JSON.stringify(ts));
      const bad = JSON.stringify({ a: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 20] } });
      let threw = false;
      try {
        parseHeader(new TextEncoder().encode(bad), 'f');
      } catch (e) {
        threw = e.name === 'CheckpointError';
      }
      assert(threw, 'a size mismatch is a CheckpointError');
      const len = new Uint8Array(8);
      new DataView(len.buffer).setBigUint64(0, 2n ** 40n, true);
      threw = false;
      try {
        headerLength(len, 'f');
      } catch (e) {
        threw = e.name === 'CheckpointError';
      }
      assert(threw, 'an absurd header length is refused');
      const MB = 1 << 20;
      const t = (name, begin, end, file = 'm') => ({ name, file, begin, end });
      const groups = groupRanges([t('c', 3 * MB, 3 * MB + 10), t('a', 100, 200), t('b', 200, 3 * MB), t('d', 3 * MB + 10, 9 * MB), t('e', 9 * MB, 9 * MB + 5), t('x', 200, 300, 'n')]);
      const shape = groups.map((g) => `${g.file}:${g.tensors.map((x) => x.name).join('')}`).join(' ');
      assert(shape === 'm:abc m:d m:e n:x', shape);
    },
  ],
  [
    "dtype 'auto': q4 on mobile / ≤ 4 GB / limits < 1 GiB / shared-memory GPUs, f16w on NVIDIA/AMD with ≥ 2 GiB limits, else q8",
    async () => {
      const { chooseDtype, deviceSignals } = await import('../../web/src/dtype.js');
      const GiB = 2 ** 30;
      const gpu = (vendor, limit, fallback = false) => ({ adapter: { vendor, isFallbackAdapter: fallback }, maxStorageBufferBindingSize: limit, maxBufferSize: limit });
      const desktop = { mobile: false, deviceMemory: 8 };
      const cases = [
        [gpu('nvidia', 4 * GiB), desktop, 'f16w'],
        [gpu('amd', 2 * GiB), desktop, 'f16w'],
        [gpu('nvidia', 4 * GiB), { mobile: false }, 'f16w'], // deviceMemory unknown (Firefox, Safari)
        [gpu('nvidia', 1.5 * GiB), desktop, 'q8'], // discrete, but limits below 2 GiB
        [{ ...gpu('nvidia', 4 * GiB), maxBufferSize: 512 * 2 ** 20 }, desktop, 'q4'], // the smaller limit counts
        [gpu('nvidia', 4 * GiB), { mobile: true, deviceMemory: 8 }, 'q4'],
        [gpu('nvidia', 4 * GiB), { mobile: false, deviceMemory: 4 }, 'q4'],
        [gpu('intel', 4 * GiB), desktop, 'q4'],
        [gpu('apple', 4 * GiB), desktop, 'q4'],
        [gpu('qualcomm', 2 * GiB), desktop, 'q4'],
        [gpu('arm', 128 * 2 ** 20), { mobile: true, deviceMemory: 2 }, 'q4'],
        [gpu('google', GiB, true), desktop, 'q8'], // SwiftShader: 1 GiB limits, a fallback adapter
        [gpu('nvidia', 4 * GiB, true), desktop, 'q8'], // a fallback adapter is never the discrete GPU
        [gpu('', 4 * GiB), desktop, 'q8'], // vendor not given
        [gpu('Intel', 4 * GiB), desktop, 'q4'], // case does not matter
      ];
      for (const [caps, device, want] of cases) {
        const { dtype, reason } = chooseDtype(caps, device);
        assert(dtype === want && reason, `${JSON.stringify(caps)} ${JSON.stringify(device)} → ${dtype} (${reason}), want ${want}`);
      }
      assert(chooseDtype().dtype === 'q4', 'nothing known (limits 0) → q4');
      // Signals: userAgentData first, then the UA string; deviceMemory only when a positive number.
      assert(deviceSignals({ userAgentData: { mobile: false }, userAgent: 'Mozilla/5.0 (Linux; Android 14) Mobile', deviceMemory: 8 }).mobile === false, 'userAgentData wins');
      assert(deviceSignals({ userAgent: 'Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X)' }).mobile === true, 'iPhone UA');
      const d = deviceSignals({ userAgent: 'Mozilla/5.0 (X11; Linux x86_64)', deviceMemory: 0 });
      assert(d.mobile === false && d.deviceMemory === undefined, JSON.stringify(d));
      assert(deviceSignals(undefined).mobile === false, 'no navigator');
    },
  ],
  [
    'q8/q4 store records: stored form from the engine, halves packed back to back and split again; converted checkpoints as they are',
    async () => {
      const { storedForm, packParts, unpackParts, quantizedBase, wantedModelTensors, convertedMode } = await import('../../worker/loader.js');
      const { parseHeader } = await import('../../worker/safetensors.js');
      const raw = Uint8Array.from({ length: 4 * 6 }, (_, i) => i);
      const matrix = { name: 'model.decoder.layers.0.mlp.down_proj.weight', dtype: 'F32', shape: [2, 3] };
      const calls = [];
      // A stand-in for the engine's storedTensors (what it returns, not how it quantizes).
      const toStored = (name, dtype, shape, bytes, numerics) => {
        calls.push([name, dtype, [...shape], bytes.length, numerics]);
        const base = name.replace(/\.weight$/, '');
        return [
          { name: `${base}.qweight`, dtype: 'U32', shape: Uint32Array.from([2, 8]), bytes: new Uint8Array(64).fill(7) },
          { name: `${base}.scales`, dtype: 'F16', shape: Uint32Array.from([2, 1]), bytes: new Uint8Array(4).fill(9) },
        ];
      };
      const parts = storedForm(matrix, raw, 'q8', toStored);
      assert(calls.length === 1 && String(calls[0]) === String([matrix.name, 'F32', [2, 3], 24, 'q8']), JSON.stringify(calls));
      const record = packParts(matrix, parts, 'q8');
      assert(record.bytes.length === 68 && record.layout.length === 2 && record.layout[1].length === 4, JSON.stringify(record.layout));
      const back = unpackParts({ ...matrix, parts: record.layout }, record.bytes, 'q8');
      assert(back.map((p) => `${p.name}:${p.dtype}:${p.shape}:${p.bytes.length}:${p.bytes[0]}`).join(' ') === 'model.decoder.layers.0.mlp.down_proj.qweight:U32:2,8:64:7 model.decoder.layers.0.mlp.down_proj.scales:F16:2,1:4:9', 'split back');
      assert(unpackParts({ ...matrix, parts: record.layout }, record.bytes.subarray(1), 'q8') === null, 'a layout that does not cover the record');
      // A half of a converted checkpoint is kept as it is, without the engine.
      const half = { name: 'model.decoder.layers.0.mlp.down_proj.qweight', dtype: 'U32', shape: [2, 8] };
      const halfRaw = new Uint8Array(64);
      const kept = storedForm(half, halfRaw, 'q4', toStored);
      assert(calls.length === 1 && kept.length === 1 && kept[0].bytes === halfRaw, 'halves bypass storedTensors');
      assert(packParts(half, kept, 'q4').layout === null, 'stored as the tensor itself');
      // f32 / f16w records stay as before (no layout); f16w matrices are f16.
      const f16 = storedForm(matrix, raw, 'f16w');
      assert(f16[0].dtype === 'F16' && f16[0].bytes.length === 12 && packParts(matrix, f16, 'f16w').layout === null, 'f16w');
      assert(unpackParts(matrix, f16[0].bytes, 'f16w')[0].dtype === 'F16', 'f16w read back');
      assert(quantizedBase('a.b.qweight') === 'a.b.weight' && quantizedBase('a.b.scales') === 'a.b.weight' && quantizedBase('a.b.weight') === null, 'quantizedBase');
      // The engine asks for <base>.weight; a converted checkpoint answers with both halves.
      const t = (name) => ({ name });
      const w = wantedModelTensors([t('n.weight'), t('m.qweight'), t('m.scales'), t('lonely.qweight'), t('extra.weight')], ['n.weight', 'm.weight', 'lonely.weight']);
      assert(w.needed.map((x) => x.name).join(' ') === 'n.weight m.qweight m.scales' && String(w.missing) === 'lonely.weight', JSON.stringify(w));
      // The converted mode comes from the safetensors metadata.
      const header = parseHeader(new TextEncoder().encode(JSON.stringify({ __metadata__: { format: 'pt', 'dia_webgpu.numerics': 'q4' }, a: { dtype: 'U32', shape: [1, 4], data_offsets: [0, 16] } })), 'f');
      assert(header.length === 1 && convertedMode(header.metadata) === 'q4', JSON.stringify(header.metadata));
      assert(convertedMode({ 'dia_webgpu.numerics': 'q3' }) === null && convertedMode(undefined) === null, 'unknown modes are not trusted');
    },
  ],
  [
    'toWav: RIFF header, 16-bit clipping, 32-bit float option',
    async () => {
      const { toWav } = await import('../../web/src/wav.js');
      const wav = toWav(new Float32Array([0, 1, -1, 2, -2, 0.5]), 22050);
      const v = new DataView(wav.buffer);
      assert(v.getUint32(24, true) === 22050 && v.getUint16(34, true) === 16 && v.getUint32(40, true) === 12, 'header');
      assert(String([0, 1, 2, 3, 4, 5].map((i) => v.getInt16(44 + 2 * i, true))) === String([0, 32767, -32767, 32767, -32767, 16384]), 'samples');
      const f = toWav({ audio: new Float32Array([0.25]), samplingRate: 44100 }, undefined, { float: true });
      const fv = new DataView(f.buffer);
      assert(fv.getUint16(20, true) === 3 && fv.getFloat32(44, true) === 0.25 && f.length === 48, 'float WAV');
    },
  ],
  [
    'HubSource: Range reads, 404 → DownloadError, 503 retried, a server without ranges → RangeNotSupportedError',
    async () => {
      const { mkdtempSync, writeFileSync } = await import('node:fs');
      const { join } = await import('node:path');
      const { tmpdir } = await import('node:os');
      const { HubSource } = await import('../../worker/loader.js');
      const dir = mkdtempSync(join(tmpdir(), 'dia-hub-'));
      writeFileSync(join(dir, 'blob.bin'), Uint8Array.from({ length: 1000 }, (_, i) => i & 255));
      const server = await startServer({
        repos: { 'a/ok': dir, 'a/flaky': { dir, failFirst: 1 }, 'a/plain': { dir, ranges: false } },
        mounts: {},
      });
      try {
        const src = (repo) => new HubSource({ baseUrl: `${server.origin}/hub/`, repo });
        let progress = 0;
        const ok = src('a/ok');
        const bytes = await ok.bytes('blob.bin', 300, 700, (n) => (progress += n));
        assert(bytes.length === 400 && bytes[0] === 300 % 256 && bytes[399] === 699 % 256 && progress === 400, 'range content');
        const name = async (p) => p.then(() => 'none', (e) => e.name);
        assert((await name(ok.bytes('nothing.bin', 0, 8))) === 'DownloadError', '404');
        const flaky = src('a/flaky');
        assert((await flaky.bytes('blob.bin', 0, 10)).length === 10 && flaky.requests === 2, `retried: ${flaky.requests} requests`);
        assert((await name(src('a/plain').bytes('blob.bin', 0, 10))) === 'RangeNotSupportedError', 'no ranges');
      } finally {
        await server.close();
      }
    },
  ],
  [
    'index naming ../../x, /abs/x, sub/dir, C:x shards → CheckpointError before any shard is requested',
    async () => {
      const { mkdtempSync, writeFileSync } = await import('node:fs');
      const { join } = await import('node:path');
      const { tmpdir } = await import('node:os');
      const { HubSource, resolveCheckpoint, unsafeNameReason } = await import('../../worker/loader.js');
      for (const ok of ['model.safetensors', 'model-00001-of-00002.safetensors', 'a..b', 'weights v2.bin']) {
        assert(unsafeNameReason(ok) === null, `${ok} refused: ${unsafeNameReason(ok)}`);
      }
      const dir = mkdtempSync(join(tmpdir(), 'dia-hub-'));
      writeFileSync(join(dir, 'config.json'), '{}');
      const server = await startServer({ repos: { 'evil/index': dir }, mounts: {} });
      const allowed = ['config.json', 'model.safetensors', 'model.safetensors.index.json'];
      try {
        for (const bad of ['../../x', '/abs/x', 'sub/dir', '..\\x', 'C:x', '..', '', 'a\u0000b', 'NUL.safetensors']) {
          writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: 'model-00001-of-00002.safetensors', b: bad } }));
          server.log.length = 0;
          const src = new HubSource({ baseUrl: `${server.origin}/hub`, repo: 'evil/index' });
          const error = await resolveCheckpoint(src).then(() => null, (e) => e);
          assert(error?.name === 'CheckpointError', `${JSON.stringify(bad)}: ${error?.name}: ${error?.message}`);
          assert(error.message.includes('not a plain file name'), error.message);
          const requested = server.log.map((e) => e.path.split('/resolve/main/')[1]);
          assert(requested.every((f) => allowed.includes(f)), `${JSON.stringify(bad)}: requested ${requested}`);
        }
        // The same rule guards every request, whatever built the name.
        server.log.length = 0;
        const src = new HubSource({ baseUrl: `${server.origin}/hub`, repo: 'evil/index' });
        const error = await src.bytes('../config.json', 0, 2).then(() => null, (e) => e);
        assert(error?.name === 'CheckpointError' && server.log.length === 0 && src.requests === 0, `${error?.name}, ${server.log.length} requests`);
      } finally {
        await server.close();
      }
    },
  ],
  [
    'engine errors across postMessage: a refused text becomes InvalidOptionError with its code and numbers; device-lost stays EngineError',
    async () => {
      const { errorFromJSON, errorToJSON, EngineError, InvalidOptionError } = await import('../../worker/errors.js');
      // What the wasm engine throws: an Error with a code and numbers as own properties (crate/src/wasm.rs).
      const engine = (message, props) => Object.assign(new Error(message), props);
      const across = (e) => errorFromJSON(structuredClone(errorToJSON(e)));
      const long = across(engine('the script is 300000 bytes long', { code: 'script-too-long', bytes: 300000, limit: 262144 }));
      assert(long instanceof InvalidOptionError && long.code === 'script-too-long', `${long.name} ${long.code}`);
      assert(long.details.bytes === 300000 && long.details.limit === 262144 && long.message === 'the script is 300000 bytes long', JSON.stringify(long.details));
      const voice = across(engine('needs its transcript', { code: 'voice-needs-transcript', segments: 4 }));
      assert(voice instanceof InvalidOptionError && voice.details.segments === 4, JSON.stringify(voice.details));
      const empty = across(engine('nothing to speak', { code: 'nothing-to-speak' }));
      assert(empty instanceof InvalidOptionError && empty.code === 'nothing-to-speak', empty.name);
      const lost = across(engine('the GPU device was lost', { code: 'device-lost' }));
      assert(lost instanceof EngineError && lost.code === 'device-lost', `${lost.name} ${lost.code}`);
      const plain = across(new Error('bad tensor'));
      assert(plain instanceof EngineError && plain.code === undefined, `${plain.name} ${plain.code}`);
    },
  ],
];
