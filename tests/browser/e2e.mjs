// End-to-end tests of the dia-webgpu package in headless Chromium (WebGPU on SwiftShader), driven by
// Playwright. Packs web/ with npm, installs the tarball into a fresh project, serves that copy, the
// test page and the fixtures under hub-style URLs, and checks loading, parity, caching, playback,
// cancellation, corruption recovery, quota errors, the demo page and the benchmark (page and Node + Dawn
// runner). Prints "N passed, N failed".
//   node e2e.mjs [--mock]   (--mock: the package was built with the JS mock engine; parity is then
//                            checked against the mock's own first output instead of the fixtures)
//   DIA_BROWSER_FULL=1      also the voice-prompt parity cases (one generation, and a long script)
//   DIA_TTS=path            the native dia-tts (tests/browser/run builds it): q8/q4 reference outputs and a
//                           converted checkpoint are made with it
//   DIA_BROWSER_ONLY=regex  only the tests whose name matches (case-insensitive; the npm pack step always
//                           runs); for iterating on a few tests, each of which must then set up what it needs
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';
import { unitTests } from './unit.mjs';
import { benchPageTest, benchRunnerTest, benchUnitTests } from './bench-tests.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const mock = process.argv.includes('--mock');
// DIA_BROWSER_FULL=1 adds the voice prompt parity generation (about 40 s on SwiftShader).
const full = process.env.DIA_BROWSER_FULL === '1';
const fixtures = resolve(root, process.env.DIA_FIXTURES ?? '../shared/fixtures/tiny');
const artifacts = join(here, 'artifacts');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const GREEDY = { temperature: 0, cfgFilterTopK: 45, maxNewTokens: 40, cfgScale: 3 };
const MIN_SNR_DB = 60;
const CANCEL_TEXT = '[S1] Cancel me. [S2] No.';
// A script of three segments (302 bytes; the splitter's segments hold at most 160): greedy with GREEDY's 40 rows
// per segment, the tiny model gives 40, 16 (its own EOS) and 40 steps (measured natively with dia-tts).
const LONG_TEXT =
  '[S1] The first speaker opens the show with a greeting. [S2] The second speaker answers, then asks about the weather. ' +
  '[S1] It is sunny today, with a light wind from the west. [S2] That sounds lovely. (laughs) Let us go for a walk in the park. ' +
  '[S1] Good idea. I will get my coat and meet you by the door.';
const LONG_SEGMENTS = 3;

// ---------------------------------------------------------------- tiny harness

const results = [];
const only = process.env.DIA_BROWSER_ONLY ? new RegExp(process.env.DIA_BROWSER_ONLY, 'i') : null;
let leftOut = 0;
async function test(name, fn, { always = false } = {}) {
  if (only && !always && !only.test(name)) {
    leftOut++;
    return;
  }
  const started = Date.now();
  try {
    const note = await fn();
    results.push(true);
    console.log(`ok   ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)${note ? `: ${note}` : ''}`);
  } catch (e) {
    results.push(false);
    console.log(`FAIL ${name} (${((Date.now() - started) / 1000).toFixed(1)} s): ${e.message}`);
  }
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

// ---------------------------------------------------------------- fixtures

function readSafetensors(file) {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  return { header: JSON.parse(buf.subarray(8, 8 + n).toString()), data: buf.subarray(8 + n) };
}

function tensorBytes(st, name) {
  const [b, e] = st.header[name].data_offsets;
  return st.data.subarray(b, e);
}

function tensorF32(st, name) {
  const bytes = tensorBytes(st, name);
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

function writeSafetensors(file, entries) {
  const header = {};
  let offset = 0;
  for (const [name, { dtype, shape, bytes }] of entries) {
    header[name] = { dtype, shape, data_offsets: [offset, offset + bytes.length] };
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(file, Buffer.concat([len, Buffer.from(json), ...entries.map(([, t]) => t.bytes)]));
}

/** The tiny Dia split into two shards + model.safetensors.index.json (the layout of large repos). */
function makeSharded(dir) {
  mkdirSync(dir, { recursive: true });
  copyFileSync(join(fixtures, 'dia/config.json'), join(dir, 'config.json'));
  const st = readSafetensors(join(fixtures, 'dia/model.safetensors'));
  const names = Object.keys(st.header).filter((n) => n !== '__metadata__');
  const shards = [[], []];
  names.forEach((n, i) => shards[i % 2].push([n, { ...st.header[n], bytes: tensorBytes(st, n) }]));
  const weightMap = {};
  shards.forEach((entries, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    writeSafetensors(join(dir, file), entries);
    for (const [n] of entries) weightMap[n] = file;
  });
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
}

function snrDb(ref, x) {
  if (ref.length !== x.length) throw new Error(`length ${x.length} ≠ reference ${ref.length}`);
  let signal = 0;
  let noise = 0;
  for (let i = 0; i < ref.length; i++) {
    signal += ref[i] * ref[i];
    noise += (ref[i] - x[i]) ** 2;
  }
  return noise === 0 ? Infinity : 10 * Math.log10(signal / noise);
}

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

/** Samples of a mono 32-bit float WAV (what dia-tts writes). */
function readWavF32(file) {
  const buf = readFileSync(file);
  for (let at = 12; at + 8 <= buf.length; ) {
    const id = buf.toString('latin1', at, at + 4);
    const size = buf.readUInt32LE(at + 4);
    if (id === 'data') return new Float32Array(buf.buffer.slice(buf.byteOffset + at + 8, buf.byteOffset + at + 8 + size));
    at += 8 + size + (size & 1);
  }
  throw new Error(`${file}: no data chunk`);
}

/** Writes mono samples as a 32-bit float WAV (what dia-tts reads as a voice prompt). */
function writeWavF32(file, samples, rate = 44100) {
  const data = Buffer.from(Float32Array.from(samples).buffer);
  const h = Buffer.alloc(44);
  h.write('RIFF', 0, 'latin1');
  h.writeUInt32LE(36 + data.length, 4);
  h.write('WAVEfmt ', 8, 'latin1');
  h.writeUInt32LE(16, 16);
  h.writeUInt16LE(3, 20); // IEEE float
  h.writeUInt16LE(1, 22);
  h.writeUInt32LE(rate, 24);
  h.writeUInt32LE(rate * 4, 28);
  h.writeUInt16LE(4, 32);
  h.writeUInt16LE(32, 34);
  h.write('data', 36, 'latin1');
  h.writeUInt32LE(data.length, 40);
  writeFileSync(file, Buffer.concat([h, data]));
}

/**
 * The native engine (dia-tts, $DIA_TTS) on the fixtures: `generate(mode, text)` → the PCM of a greedy generation
 * with GREEDY's settings, `convert(mode)` → a converted checkpoint directory; each made once, in `work`.
 */
function nativeTool(work) {
  const bin = process.env.DIA_TTS;
  const made = new Map();
  const run = (args) => {
    if (!bin || !existsSync(bin)) throw new Error(`the native dia-tts is needed (DIA_TTS=${bin ?? ''}; tests/browser/run builds it)`);
    execFileSync(bin, args, { stdio: 'pipe', env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? work } });
  };
  const once = (key, make) => {
    if (!made.has(key)) made.set(key, make());
    return made.get(key);
  };
  return {
    generate: (mode, text, extra = []) =>
      once(`gen-${mode}-${text}-${extra.join(' ')}`, () => {
        const out = join(work, `native-${mode}-${made.size}.wav`);
        const g = ['--temperature', GREEDY.temperature, '--cfg-filter-top-k', GREEDY.cfgFilterTopK, '--max-new-tokens', GREEDY.maxNewTokens, '--cfg-scale', GREEDY.cfgScale];
        run(['--model', join(fixtures, 'dia'), '--codec', join(fixtures, 'dac'), '--text', text, '--dtype', mode, ...g.map(String), ...extra, '--out', out]);
        return readWavF32(out);
      }),
    /** `dia-tts --batch --text-file` on `texts` (one per line): the PCM of each line's WAV, in list order. */
    generateBatch: (mode, texts, extra = []) =>
      once(`batch-${mode}-${texts.join('\n')}-${extra.join(' ')}`, () => {
        const stem = join(work, `native-batch-${mode}-${made.size}`);
        writeFileSync(`${stem}.txt`, `${texts.join('\n')}\n`);
        const g = ['--temperature', GREEDY.temperature, '--cfg-filter-top-k', GREEDY.cfgFilterTopK, '--max-new-tokens', GREEDY.maxNewTokens, '--cfg-scale', GREEDY.cfgScale];
        run(['--model', join(fixtures, 'dia'), '--codec', join(fixtures, 'dac'), '--batch', '--text-file', `${stem}.txt`, '--dtype', mode, ...g.map(String), ...extra, '--out', `${stem}.wav`]);
        return texts.map((_, i) => readWavF32(`${stem}-${i + 1}.wav`));
      }),
    convert: (mode, dir) =>
      once(`convert-${mode}`, () => {
        run(['convert', '--model', join(fixtures, 'dia'), '--dtype', mode, '--out', dir]);
        return dir;
      }),
  };
}

/**
 * The stored form of one HF-layout Dia tensor in q8 / q4, as crate/src/dia/model.rs (MatrixRole::format) and
 * crate/src/quant.rs define it: norms F32; embedding tables F16 in q8; other matrices as <base>.qweight (U32,
 * groups of 32: 8 words per group in q8, 4 in q4) + <base>.scales (F16, one per group); q4 keeps the embedding tables
 * and the attention projections at q8, except the cross-attention K/V projections.
 */
function expectedParts(t, mode) {
  if (t.shape.length !== 2) return [{ name: t.name, dtype: 'F32', shape: t.shape }];
  const embedding = /^model\.(encoder\.embedding|decoder\.embeddings\.embed)\.weight$/.test(t.name);
  if (embedding && mode === 'q8') return [{ name: t.name, dtype: 'F16', shape: t.shape }];
  const [rows, cols] = t.shape;
  const groups = Math.ceil(cols / 32);
  const crossKv = /\.cross_attention\.[kv]_proj\.weight$/.test(t.name);
  const words = mode === 'q8' || embedding || (/_attention\./.test(t.name) && !crossKv) ? 8 : 4;
  const base = t.name.replace(/\.weight$/, '');
  return [
    { name: `${base}.qweight`, dtype: 'U32', shape: [rows, groups * words] },
    { name: `${base}.scales`, dtype: 'F16', shape: [rows, groups] },
  ];
}
const partBytes = (p) => p.shape.reduce((a, d) => a * d, 1) * { F32: 4, F16: 2, U32: 4 }[p.dtype];

// ---------------------------------------------------------------- page helpers

/** Runs `fn(arg)` in the page; a thrown error comes back as an Error with the page error's name. */
async function call(page, fn, arg) {
  const r = await page.evaluate(
    async ([source, a]) => {
      try {
        // eslint-disable-next-line no-eval
        return { value: await (0, eval)(`(${source})`)(a) };
      } catch (e) {
        return { error: { name: e?.name ?? 'Error', message: e?.message ?? String(e), details: e?.details } };
      }
    },
    [fn.toString(), arg],
  );
  if (r.error) {
    const e = new Error(`${r.error.name}: ${r.error.message}`);
    e.pageError = r.error;
    throw e;
  }
  return r.value;
}

async function expectError(promise, name) {
  try {
    await promise;
  } catch (e) {
    if (e.pageError?.name === name) return e.pageError;
    throw new Error(`expected ${name}, got ${e.message}`);
  }
  throw new Error(`expected ${name}, but it succeeded`);
}

async function openPage(context, url) {
  const page = await context.newPage();
  page.on('pageerror', (e) => console.log(`  [page error] ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.log(`  [console.${m.type()}] ${m.text()}`);
  });
  await page.goto(url);
  await page.waitForSelector('body[data-ready=yes]', { timeout: 30000 });
  return page;
}

/** DiaTTS.load in the page (result kept as window.tts); returns { info, events }. */
function load(page, options) {
  return call(
    page,
    async (o) => {
      const events = [];
      await window.tts?.dispose();
      window.tts = await window.dia.DiaTTS.load({ ...o, onProgress: (e) => events.push(e) });
      return { info: window.tts.info, events };
    },
    options,
  );
}

function generate(page, text, options) {
  return call(
    page,
    async ({ text, options }) => {
      const r = await window.tts.generate(text, options);
      return { audio: Array.from(r.audio), samples: r.samples, steps: r.steps, seconds: r.seconds, segments: r.segments, samplingRate: r.samplingRate, gpuMemory: r.gpuMemory };
    },
    { text, options },
  );
}

// ---------------------------------------------------------------- the tests

async function main() {
  const expected = JSON.parse(readFileSync(join(fixtures, 'expected.json'), 'utf8'));
  const t0Text = expected.texts[0];
  const expectedTensors = readSafetensors(join(fixtures, 'expected.safetensors'));
  const fixture = (name) => tensorF32(expectedTensors, name);
  const t0Pcm = fixture('t0.pcm');
  const work = mkdtempSync(join(tmpdir(), 'dia-web-e2e-'));
  rmSync(artifacts, { recursive: true, force: true });
  mkdirSync(artifacts, { recursive: true });
  let reference = mock ? null : t0Pcm; // mock: the first f32 output becomes the reference
  const checkT0 = (audio) => {
    reference ??= Float32Array.from(audio);
    const snr = snrDb(reference, audio);
    assert(snr >= MIN_SNR_DB, `SNR ${snr.toFixed(1)} dB < ${MIN_SNR_DB} dB against ${mock ? 'the first run' : 't0.pcm'}`);
    return snr;
  };
  const fmtDb = (snr) => (snr === Infinity ? '∞ dB (bit-exact)' : `${snr.toFixed(1)} dB`);

  for (const [name, fn] of unitTests) await test(`unit: ${name}`, fn);
  // The benchmark's model checks use the wasm engine (web/pkg), which the mock build lacks.
  if (!mock) for (const [name, fn] of benchUnitTests(fixtures)) await test(`unit: ${name}`, fn);

  // The package as a user gets it: npm pack, installed into a fresh project.
  let pkgDir = null;
  await test('npm pack → install into a fresh project → import in node, TypeScript types check', async () => {
    const out = execFileSync('npm', ['pack', '--pack-destination', work, '--json'], { cwd: join(root, 'web'), encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const [{ filename, files }] = JSON.parse(out);
    const app = join(work, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
    execFileSync('npm', ['install', '--no-audit', '--no-fund', '--offline', join(work, filename)], { cwd: app, stdio: 'pipe' });
    pkgDir = join(app, 'node_modules', 'dia-webgpu');
    const paths = files.map((f) => f.path);
    for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/player-worklet.js', 'dist/worker/worker.js', 'dist/wasm/dia_webgpu.js', 'demo/index.html', 'demo/bench.html', 'demo/bench-core.js']) {
      assert(paths.includes(f), `the tarball lacks ${f}`);
    }
    if (!mock) assert(paths.includes('dist/wasm/dia_webgpu_bg.wasm'), 'the tarball lacks the wasm');
    // Importing in node must not touch browser globals; toWav works anywhere.
    const check = `
      import { DiaTTS, toWav, SAMPLE_RATE, QuotaExceededError, DiaError, CancelledError } from 'dia-webgpu';
      const wav = toWav(new Float32Array([0, 0.5, -1, 1]), SAMPLE_RATE);
      if (typeof DiaTTS.load !== 'function' || !(new QuotaExceededError('x') instanceof DiaError)) throw new Error('exports');
      if (wav.length !== 44 + 8 || String.fromCharCode(...wav.slice(0, 4)) !== 'RIFF') throw new Error('wav');
      if (new DataView(wav.buffer).getInt16(46, true) !== 16384) throw new Error('wav sample');
      console.log(JSON.stringify({ cancelled: new CancelledError('c').name }));`;
    writeFileSync(join(app, 'check.mjs'), check);
    const printed = execFileSync('node', ['check.mjs'], { cwd: app, encoding: 'utf8' });
    assert(JSON.parse(printed).cancelled === 'CancelledError', 'error names survive');
    // The declarations type-check a typical use under strict TypeScript.
    writeFileSync(
      join(app, 'use.ts'),
      `import { DiaTTS, chooseDtype, toWav, InvalidOptionError, type LoadProgress, type GeneratedAudio, type GenerationProgress, type Numerics, type GeneratedText, type BatchProgress } from 'dia-webgpu';
       export async function speak(text: string): Promise<Uint8Array> {
         const tts = await DiaTTS.load({ dtype: 'q4', onProgress: (p: LoadProgress) => console.log(p.progress) });
         const mode: Numerics = tts.info.numerics;
         console.log(mode, tts.info.storedBytes, tts.info.gpuMemory.peak, chooseDtype(await DiaTTS.capabilities()).dtype);
         for await (const chunk of tts.stream(text, { temperature: 1.2 })) console.log(chunk.length);
         const out: GeneratedAudio = await tts.generate(text, { cfgScale: 3, seed: 1 });
         const voice = { audio: out.audio, transcript: '[S1] Hello.' };
         const onProgress = (p: GenerationProgress) => console.log(p.segment + 1, p.segments, p.rows, p.estimatedRows, p.audioSeconds);
         const long = await tts.speak(text.repeat(20), { prompt: voice, onProgress });
         console.log(long.segments, long.played);
         try { await tts.generate(''); } catch (e) { if (e instanceof InvalidOptionError && e.code === 'script-too-long') console.log(e.details.limit); }
         const lines: GeneratedText[] = await tts.generate(['[S1] One.', '[S2] Two.'], { batchSize: 2, prompt: voice, onText: (i: number, r: GeneratedText) => console.log(i, r.index, r.audio.length), onProgress: (p: BatchProgress) => console.log(p.batch, p.rows, p.maxRows) });
         console.log(lines[1].samplingRate, lines.length);
         return toWav(out.audio, out.samplingRate);
       }`,
    );
    const tsc = join(here, 'node_modules', 'typescript', 'bin', 'tsc');
    execFileSync('node', [tsc, '--noEmit', '--strict', '--target', 'es2022', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--lib', 'es2022,dom,dom.iterable', 'use.ts'], { cwd: app, stdio: 'pipe' });
    return `${filename}, ${files.length} files`;
  }, { always: true });
  if (!pkgDir) {
    console.log('0 passed, 1 failed (the package could not be packed; nothing else was run)');
    process.exit(1);
  }

  const sharded = join(work, 'sharded');
  makeSharded(sharded);
  const convertedQ4 = join(work, 'converted-q4'); // made by `dia-tts convert` when a test needs it
  const server = await startServer({
    repos: {
      'tiny/dia': join(fixtures, 'dia'),
      'tiny/dac': join(fixtures, 'dac'),
      'tiny-sharded/dia': sharded,
      'tiny-q4conv/dia': convertedQ4,
      'tiny-slow/dia': { dir: join(fixtures, 'dia'), delayMs: 300 },
      'tiny-slow/dac': { dir: join(fixtures, 'dac'), delayMs: 300 },
    },
    mounts: { pkg: pkgDir, test: join(here, 'page') },
  });
  const { origin, log } = server;
  const base = `${origin}/hub`;
  const resetLog = () => log.splice(0);
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    args: [
      '--headless=new',
      '--no-sandbox',
      '--enable-unsafe-webgpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
      '--disable-dev-shm-usage',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  const context = await browser.newContext();
  const testPage = `${origin}/test/index.html`;
  const f32 = { model: 'tiny/dia', codec: 'tiny/dac', baseUrl: base, dtype: 'f32' };

  try {
    await test('feature detection: without WebGPU, load throws WebGPUUnavailableError with a readable message', async () => {
      const ctx = await browser.newContext();
      await ctx.addInitScript(() => Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined, configurable: true }));
      const page = await openPage(ctx, testPage);
      const caps = await call(page, () => window.dia.DiaTTS.capabilities());
      const err = await expectError(load(page, f32), 'WebGPUUnavailableError');
      await ctx.close();
      assert(caps.webgpu === false && /WebGPU/.test(err.message), `capabilities ${JSON.stringify(caps)}, message ${err.message}`);
      return err.message;
    });

    let page = await openPage(context, testPage);

    await test('capabilities: SwiftShader WebGPU adapter', async () => {
      const caps = await call(page, () => window.dia.DiaTTS.capabilities());
      assert(caps.webgpu, `no WebGPU: ${caps.reason}`);
      // A software adapter: dtype 'auto' picks q8 (rule 6), unless the device looks small (rules 1–3).
      const small = caps.device.mobile || caps.device.deviceMemory <= 4;
      assert(caps.autoDtype.dtype === (small ? 'q4' : 'q8'), `auto picks ${JSON.stringify(caps.autoDtype)} with ${JSON.stringify(caps.device)}`);
      return `${caps.adapter.description || caps.adapter.vendor || 'adapter'}, fallback ${caps.adapter.isFallbackAdapter}, shader-f16 ${caps.shaderF16}, max binding ${caps.maxStorageBufferBindingSize}; auto → ${caps.autoDtype.dtype} (${caps.autoDtype.reason}; device ${JSON.stringify(caps.device)})`;
    });

    await test('f32 → f16 conversion (f16w store) is bit-identical to the platform Float16Array', async () => {
      const r = await call(page, async () => {
        if (typeof Float16Array !== 'function') return { skipped: true };
        const { toF16Bytes } = await import('../pkg/dist/worker/f16.js');
        const bits = new Uint32Array(1 << 20);
        for (let i = 0; i < bits.length; i += 16384) crypto.getRandomValues(bits.subarray(i, i + 16384)); // 64 KiB per call at most
        // Edge cases: subnormal/overflow boundaries, ties, ±0, ±inf; NaN payloads are left out.
        const edges = [0, 0x80000000, 0x7f800000, 0xff800000, 0x33000000, 0x33000001, 0x387fe000, 0x38800000, 0x477fe000, 0x477ff000, 0x477fefff, 0x3f801000, 0x3f803000, 0x3f801001, 0x00000001];
        bits.set(edges);
        for (let i = 0; i < bits.length; i++) if ((bits[i] & 0x7f800000) === 0x7f800000 && bits[i] & 0x7fffff) bits[i] = 0;
        const bytes = new Uint8Array(bits.buffer);
        const mine = new Uint16Array(toF16Bytes(bytes, 'F32', false).buffer);
        const native = new Uint16Array(toF16Bytes(bytes, 'F32', true).buffer);
        let diff = 0;
        for (let i = 0; i < mine.length; i++) if (mine[i] !== native[i]) diff++;
        return { n: mine.length, diff };
      });
      if (r.skipped) return 'skipped: no Float16Array in this browser';
      assert(r.diff === 0, `${r.diff} of ${r.n} values differ`);
      return `${r.n} values, 0 differ`;
    });

    await test('load f32 from hub URLs: headers then per-tensor Range requests, progress events', async () => {
      await call(page, () => window.dia.DiaTTS.clearCache());
      resetLog();
      const { info, events } = await load(page, f32);
      const model = log.filter((e) => e.path.includes('/tiny/dia/'));
      const weights = log.filter((e) => e.path.endsWith('.safetensors'));
      assert(!info.fromCache && info.requests === log.length, `info ${JSON.stringify(info)} vs ${log.length} requests`);
      assert(weights.every((e) => e.range && e.status === 206), 'every weight request is a 206 Range request');
      const modelWeights = model.filter((e) => e.path.endsWith('.safetensors'));
      assert(modelWeights[0].range === 'bytes=0-7' && /^bytes=8-\d+$/.test(modelWeights[1].range), `header requests first: ${modelWeights.slice(0, 2).map((e) => e.range)}`);
      const done = events.filter((e) => e.status === 'downloaded');
      assert(done.length === info.tensors, `${done.length} downloaded events for ${info.tensors} tensors`);
      const last = events.at(-1);
      assert(last.loaded === last.total && last.tensorsLoaded === last.tensorsTotal && Math.abs(last.progress - 100) < 1e-9, `last event ${JSON.stringify(last)}`);
      assert(events.every((e, i) => i === 0 || e.loaded >= events[i - 1].loaded), 'progress never goes back');
      assert(events.some((e) => e.status === 'resolving'), 'a resolving event');
      return `${info.tensors} tensors, ${log.length} requests (${weights.length} ranges), ${(info.networkBytes / 1e6).toFixed(2)} MB, ${events.length} progress events, ${info.seconds.toFixed(2)} s; ${info.adapterInfo}`;
    });

    // Generations are the slow part on SwiftShader (~0.6 s per decoder step), so only five run, all on
    // one loaded engine per numerics: the parity run, the cancelled one, the speak that follows it, one in
    // f16w, and the demo page's (24 steps).
    let t0Audio = null;
    await test(`generate t0 greedy in f32 → PCM matches t0.pcm (SNR ≥ ${MIN_SNR_DB} dB)`, async () => {
      const r = await generate(page, t0Text, GREEDY);
      assert(r.samples === r.audio.length && r.samplingRate === 44100, `samples ${r.samples} vs ${r.audio.length}`);
      // A text of one segment goes through the long-form path unchanged: one segment, the reference's PCM.
      assert(r.segments === 1, `${r.segments} segments for a ${t0Text.length}-byte text`);
      const snr = checkT0(r.audio);
      t0Audio = r.audio;
      return `${r.audio.length} samples, ${r.steps} steps in ${r.seconds.toFixed(1)} s, SNR ${fmtDb(snr)}`;
    });

    // The first chunk is streamed once row 40 exists (8 new frames + 16 of context + the 15-row delay), and
    // the random-weight tiny model, sampling, ends sooner than that (31–75 steps over 25 seeds, measured
    // natively), so its chunks would all come after the end. Greedy on CANCEL_TEXT loops without EOS for
    // ~350 steps (measured natively; argmax is robust to SwiftShader's rounding): cancelled at its first
    // chunk, it is stopped mid-way.
    await test('cancel mid-generation: no chunk after cancel(), the worker stops and says so', async () => {
      const r = await call(
        page,
        async ({ text, options, afterMs }) => {
          const messages = [];
          const listen = ({ data }) => messages.push({ type: data.type, at: performance.now() });
          window.tts.worker.addEventListener('message', listen);
          const startedAt = performance.now();
          const stream = window.tts.stream(text, options);
          let chunks = 0;
          let afterCancel = 0;
          let cancelledAt = null;
          let cancelling = null;
          let error = null;
          // Cancel at the first chunk, or after `afterMs` if the first chunk is further away than that.
          const cancelNow = () => {
            if (cancelledAt === null) {
              cancelledAt = performance.now();
              cancelling = window.tts.cancel();
            }
          };
          const timer = setTimeout(cancelNow, afterMs);
          try {
            for await (const chunk of stream) {
              if (cancelledAt !== null) afterCancel++;
              chunks += chunk.length ? 1 : 0;
              cancelNow();
            }
          } catch (e) {
            error = e.name;
          }
          clearTimeout(timer);
          await cancelling;
          await new Promise((r) => setTimeout(r, 1000)); // anything still on its way arrives now
          window.tts.worker.removeEventListener('message', listen);
          const end = messages.findIndex((m) => m.type === 'cancelled' || m.type === 'done');
          return {
            chunks,
            afterCancel,
            error,
            ended: messages.filter((m) => m.type === 'cancelled' || m.type === 'done').map((m) => m.type),
            chunksAfterAck: messages.slice(end + 1).filter((m) => m.type === 'chunk').length,
            runMs: cancelledAt - startedAt,
            ackMs: end < 0 ? null : messages[end].at - cancelledAt,
          };
        },
        { text: CANCEL_TEXT, options: { ...GREEDY, maxNewTokens: 300 }, afterMs: mock ? 50 : 120000 },
      );
      assert(r.error === 'CancelledError', `stream ended with ${r.error}`);
      assert(r.chunks >= 1, `cancelled before any chunk (after ${(r.runMs / 1000).toFixed(1)} s): not mid-stream`);
      assert(r.afterCancel === 0, `${r.afterCancel} chunk(s) after cancel()`);
      assert(r.ended.length === 1 && r.ended[0] === 'cancelled', `the worker answered ${r.ended} (a generation that ran to its end was not cancelled mid-way)`);
      assert(r.chunksAfterAck === 0, `${r.chunksAfterAck} chunk message(s) after the worker's acknowledgement`);
      return `cancelled ${(r.runMs / 1000).toFixed(1)} s in, after ${r.chunks} chunk(s); the worker stopped ${(r.ackMs / 1000).toFixed(1)} s after cancel()`;
    });

    await test('speak after the cancel (chunks transferred to the AudioWorklet, resampled to 48 kHz): consumes exactly the generated samples; PCM right', async () => {
      const r = await call(
        page,
        async ({ text, opts }) => {
          const positions = [];
          const audioContext = new AudioContext({ sampleRate: 48000 });
          const r = await window.tts.speak(text, { ...opts, audioContext, onPosition: (pos) => positions.push(pos.samples) });
          await audioContext.close();
          return {
            audio: Array.from(r.audio),
            samples: r.samples,
            played: r.played,
            underruns: r.underruns,
            sharedMemory: r.sharedMemory,
            positions: positions.length,
            monotonic: positions.every((x, i) => i === 0 || x >= positions[i - 1]),
          };
        },
        { text: t0Text, opts: GREEDY },
      );
      assert(!r.sharedMemory, 'not cross-origin isolated: transferred chunks');
      assert(r.played === r.audio.length && r.samples === r.audio.length, `played ${r.played}, generated ${r.audio.length}`);
      assert(r.positions > 0 && r.monotonic, `${r.positions} position reports, monotonic ${r.monotonic}`);
      const snr = checkT0(r.audio);
      return `${r.played} samples played at 48000 Hz, ${r.underruns} underrun(s), ${r.positions} position reports; SNR ${fmtDb(snr)}`;
    });

    // A Rust panic traps the wasm instance, and a lost GPU device ends the engine: either way the request fails
    // with an EngineError saying so, and the DiaTTS starts a new engine (a new worker, the weights from
    // IndexedDB) for its next request. The faults come from generate's test-only `testHook` option, at the
    // generation's second cancellation check (decoder steps submitted, readbacks in flight).
    const ensureF32Engine = async () => {
      if (!(await call(page, () => window.tts?.info?.numerics === 'f32'))) await load(page, f32);
    };
    const FAULT_RUN = { ...GREEDY, maxNewTokens: 300 }; // CANCEL_TEXT: still generating when the fault comes
    const native = mock ? null : nativeTool(work);

    await test('a Rust panic during generate → EngineError (code panic) with the panic text; the next generate restarts the engine from IndexedDB, PCM right', async () => {
      await ensureF32Engine();
      await call(page, () => (window.firstWorker = window.tts.worker));
      const err = await expectError(generate(page, CANCEL_TEXT, { ...FAULT_RUN, testHook: 'panic' }), 'EngineError');
      assert(err.details?.code === 'panic', `code ${err.details?.code}: ${err.message}`);
      assert(/panicked at/.test(err.message) && /forced panic/.test(err.message), `the panic text is missing: ${err.message}`);
      resetLog();
      const r = await generate(page, t0Text, GREEDY);
      const { info, newWorker } = await call(page, () => ({ info: window.tts.info, newWorker: window.tts.worker !== window.firstWorker }));
      assert(newWorker, 'the generation after the panic ran in the old worker');
      assert(info.fromCache && log.length === 0, `restarting the engine made ${log.length} request(s)`);
      const snr = checkT0(r.audio);
      return `"${err.message.split('\n').join(' ')}"; then the engine restarted (${info.tensors} tensors from IndexedDB in ${info.seconds.toFixed(2)} s) and generated ${r.audio.length} samples, SNR ${fmtDb(snr)}`;
    });

    await test('GPU device destroyed mid-generation → EngineError (code device-lost); then a new load and generation work, PCM right', async () => {
      await ensureF32Engine();
      const r = await call(
        page,
        async ({ text, options }) => {
          let chunks = 0;
          try {
            await window.tts.generate(text, { ...options, onChunk: () => chunks++ });
            return { chunks };
          } catch (e) {
            return { chunks, error: { name: e.name, message: e.message, code: e.code } };
          }
        },
        { text: CANCEL_TEXT, options: { ...FAULT_RUN, testHook: 'lose-device' } },
      );
      assert(r.error, `the generation on a destroyed device succeeded (${r.chunks} chunks)`);
      assert(r.error.name === 'EngineError' && r.error.code === 'device-lost', `${r.error.name} (code ${r.error.code}): ${r.error.message}`);
      assert(r.chunks === 0, `${r.chunks} chunk(s) came from the generation the device was lost under`);
      resetLog();
      const { info } = await load(page, f32);
      assert(info.fromCache, 'the new load read the weight store');
      const g = await generate(page, t0Text, GREEDY);
      const snr = checkT0(g.audio);
      return `"${r.error.message}"; then a new load (${info.tensors} tensors from IndexedDB) generated ${g.audio.length} samples, SNR ${fmtDb(snr)}`;
    });

    // Long-form (issue 16): a script of several segments is one continuous stream. The native dia-tts speaks the
    // same script through the same `Tts::speak_script` (on the machine's Vulkan adapter): the browser's PCM must
    // equal it, as the single-generation parity tests require.
    let longAudio = null;
    const checkLong = (audio) => {
      assert(audio.every(Number.isFinite), 'audio with NaN or infinite samples');
      if (mock) {
        longAudio ??= Float32Array.from(audio);
        const snr = snrDb(longAudio, audio);
        assert(snr >= MIN_SNR_DB, `SNR ${snr.toFixed(1)} dB against the first long run (mock)`);
        return 'mock engine: compared with its first long run';
      }
      const ref = native.generate('f32', LONG_TEXT);
      const snr = snrDb(ref, audio);
      assert(snr >= MIN_SNR_DB, `SNR ${snr.toFixed(1)} dB < ${MIN_SNR_DB} dB against the native speak_script (${ref.length} samples, browser ${audio.length})`);
      return `SNR ${fmtDb(snr)} against native dia-tts`;
    };
    /** Progress events in order: every segment 0..n-1 starts once (rows 0), rows and audio never go back. */
    const checkProgress = (events, segments) => {
      assert(events.length > 0, 'no progress events');
      assert(events.every((e) => e.segments === segments), `segments reported: ${[...new Set(events.map((e) => e.segments))]}, ${segments} expected`);
      const starts = events.filter((e) => e.rows === 0).map((e) => e.segment);
      assert(JSON.stringify(starts) === JSON.stringify([...Array(segments).keys()]), `segment starts ${JSON.stringify(starts)}`);
      for (let i = 1; i < events.length; i++) {
        const [a, b] = [events[i - 1], events[i]];
        const ordered = b.segment > a.segment || (b.segment === a.segment && b.rows >= a.rows);
        assert(ordered && b.framesOut >= a.framesOut, `progress went back: ${JSON.stringify(a)} → ${JSON.stringify(b)}`);
        assert(b.segment <= a.segment + 1, `segment ${a.segment} → ${b.segment}`);
      }
      assert(events.every((e) => e.estimatedRows > 0 && Math.abs(e.audioSeconds - (e.framesOut * 512) / 44100) < 1e-9), `fields: ${JSON.stringify(events[0])}`);
    };

    await test(`long script (${LONG_SEGMENTS} segments) through stream(): progress segment by segment, one continuous PCM equal to the native speak_script`, async () => {
      await ensureF32Engine();
      const r = await call(
        page,
        async ({ text, options }) => {
          const events = [];
          const stream = window.tts.stream(text, { ...options, onProgress: (p) => events.push(p) });
          const chunks = [];
          for await (const chunk of stream) chunks.push(...chunk);
          const result = await stream.result;
          return { audio: chunks, result, events };
        },
        { text: LONG_TEXT, options: GREEDY },
      );
      assert(r.result.segments === LONG_SEGMENTS, `result.segments ${r.result.segments}`);
      assert(r.result.samples === r.audio.length && r.audio.length > 0, `samples ${r.result.samples}, streamed ${r.audio.length}`);
      checkProgress(r.events, LONG_SEGMENTS);
      const parity = checkLong(r.audio);
      return `${r.audio.length} samples, ${r.result.steps} steps in ${r.result.seconds.toFixed(1)} s, ${r.events.length} progress events; ${parity}`;
    });

    await test('long script through speak(): played through the AudioWorklet, all samples consumed, PCM equal to the native speak_script', async () => {
      await ensureF32Engine();
      const r = await call(
        page,
        async ({ text, options }) => {
          const events = [];
          const audioContext = new AudioContext();
          const r = await window.tts.speak(text, { ...options, audioContext, onProgress: (p) => events.push(p) });
          await audioContext.close();
          return { audio: Array.from(r.audio), samples: r.samples, played: r.played, segments: r.segments, events };
        },
        { text: LONG_TEXT, options: GREEDY },
      );
      assert(r.segments === LONG_SEGMENTS && r.played === r.audio.length && r.samples === r.audio.length, `segments ${r.segments}, played ${r.played} of ${r.audio.length}`);
      checkProgress(r.events, LONG_SEGMENTS);
      return `${r.played} samples played; ${checkLong(r.audio)}`;
    });

    if (full) {
      await test('long script with a voice prompt { audio, transcript }: every segment continues it; PCM equals native dia-tts --prompt-audio --prompt-text', async () => {
        await ensureF32Engine();
        const prompt = fixture('clone.prompt_pcm');
        const transcript = t0Text;
        const r = await call(
          page,
          async ({ text, options, prompt, transcript }) => {
            const events = [];
            const out = await window.tts.generate(text, { ...options, prompt: { audio: Float32Array.from(prompt), transcript }, onProgress: (p) => events.push(p) });
            return { audio: Array.from(out.audio), segments: out.segments, steps: out.steps, seconds: out.seconds, events };
          },
          { text: LONG_TEXT, options: GREEDY, prompt: Array.from(prompt), transcript },
        );
        assert(r.segments === LONG_SEGMENTS, `${r.segments} segments`);
        checkProgress(r.events, LONG_SEGMENTS);
        assert(r.audio.every(Number.isFinite), 'audio with NaN or infinite samples');
        if (mock) return `${r.audio.length} samples (mock engine: not compared)`;
        const wav = join(work, 'voice-prompt.wav');
        writeWavF32(wav, prompt);
        const ref = native.generate('f32', LONG_TEXT, ['--prompt-audio', wav, '--prompt-text', transcript]);
        const snr = snrDb(ref, r.audio);
        assert(snr >= MIN_SNR_DB, `SNR ${snr.toFixed(1)} dB < ${MIN_SNR_DB} dB against native (${ref.length} samples, browser ${r.audio.length})`);
        return `${r.audio.length} samples, ${r.steps} steps in ${r.seconds.toFixed(1)} s; SNR ${fmtDb(snr)} against native dia-tts`;
      });
    }

    await test('cancel mid-script: stopped once segment 2 of 3 has started, no progress after cancel(), the worker says cancelled and nothing follows', async () => {
      await ensureF32Engine();
      const r = await call(
        page,
        async ({ text, options }) => {
          const messages = [];
          const listen = ({ data }) => messages.push(data.type === 'progress' ? { type: 'progress', segment: data.progress.segment } : { type: data.type });
          window.tts.worker.addEventListener('message', listen);
          let cancelling = null;
          let afterCancel = 0;
          let chunks = 0;
          // Cancelled at the first progress event of the second segment (its start, between segments).
          const onProgress = (p) => {
            if (cancelling) afterCancel++;
            else if (p.segment >= 1) cancelling = window.tts.cancel();
          };
          let error = null;
          try {
            for await (const chunk of window.tts.stream(text, { ...options, onProgress })) chunks += chunk.length ? 1 : 0;
          } catch (e) {
            error = e.name;
          }
          await cancelling;
          await new Promise((r) => setTimeout(r, 1000)); // anything still on its way arrives now
          window.tts.worker.removeEventListener('message', listen);
          const end = messages.findIndex((m) => m.type === 'cancelled' || m.type === 'done');
          return {
            error,
            chunks,
            afterCancel,
            ended: messages.filter((m) => m.type === 'cancelled' || m.type === 'done').map((m) => m.type),
            afterAck: messages.slice(end + 1).length,
            segmentsStarted: [...new Set(messages.filter((m) => m.type === 'progress').map((m) => m.segment))],
          };
        },
        { text: LONG_TEXT, options: GREEDY },
      );
      assert(r.error === 'CancelledError', `stream ended with ${r.error}`);
      assert(r.afterCancel === 0, `${r.afterCancel} progress event(s) after cancel()`);
      assert(r.ended.length === 1 && r.ended[0] === 'cancelled', `the worker answered ${r.ended}`);
      assert(r.afterAck === 0, `${r.afterAck} message(s) after the worker's acknowledgement`);
      assert(!r.segmentsStarted.includes(LONG_SEGMENTS - 1), `the last segment started: ${r.segmentsStarted}`);
      return `segments started: ${r.segmentsStarted.join(', ')} of ${LONG_SEGMENTS}; ${r.chunks} chunk(s) before the cancel`;
    });

    await test('a script over the splitter\'s maximum → InvalidOptionError (code script-too-long); a voice prompt without transcript on a long script → InvalidOptionError (code voice-needs-transcript); whitespace → code nothing-to-speak; the engine stays usable', async () => {
      await ensureF32Engine();
      const r = await call(page, async (text) => {
        const outcome = async (p) => p.then(() => ({ name: 'none' }), (e) => ({ name: e.name, code: e.code, message: e.message, details: e.details }));
        const tooLong = await outcome(window.tts.generate(`[S1] ${'a'.repeat(256 * 1024)}`));
        const voice = await outcome(window.tts.generate(text, { prompt: new Float32Array(4410).fill(0.1) }));
        const nothing = await outcome(window.tts.generate(' \n '));
        return { tooLong, voice, nothing };
      }, LONG_TEXT);
      assert(r.tooLong.name === 'InvalidOptionError' && r.tooLong.code === 'script-too-long', `over-long: ${JSON.stringify(r.tooLong)}`);
      assert(r.tooLong.details.bytes === 256 * 1024 + 5 && r.tooLong.details.limit === 256 * 1024, `details ${JSON.stringify(r.tooLong.details)}`);
      assert(r.voice.name === 'InvalidOptionError' && r.voice.code === 'voice-needs-transcript' && r.voice.details.segments === LONG_SEGMENTS, `voice: ${JSON.stringify(r.voice)}`);
      assert(r.nothing.name === 'InvalidOptionError' && r.nothing.code === 'nothing-to-speak', `whitespace: ${JSON.stringify(r.nothing)}`);
      // The engine is unharmed: a generation right after is the reference's.
      const g = await generate(page, t0Text, GREEDY);
      const snr = checkT0(g.audio);
      return `"${r.tooLong.message}" | "${r.voice.message}" | "${r.nothing.message}"; then t0 SNR ${fmtDb(snr)}`;
    });

    // Lists of texts (issue 17): generate([...texts]) speaks each text as its own audio, a batch of texts per decoder
    // step (Tts::speak_batch). Greedy, every text is exactly that text generated alone: the reference is t0.pcm for t0
    // and the native dia-tts --text for the others (the mock engine: its own generation of the text alone).
    const LIST = [t0Text, expected.texts[1], '[S2] A third line, in a batch of its own.'];
    const listParity = async (i, text, audio) => {
      if (!mock && text === t0Text) return checkT0(audio);
      const ref = mock ? Float32Array.from((await generate(page, text, GREEDY)).audio) : native.generate('f32', text);
      const snr = snrDb(ref, audio);
      assert(snr >= MIN_SNR_DB, `text ${i}: SNR ${snr.toFixed(1)} dB < ${MIN_SNR_DB} dB against it generated alone (${ref.length} samples, list ${audio.length})`);
      return snr;
    };

    await test('a list the package or the engine refuses → InvalidOptionError naming the text: empty list, a blank text, a non-string, a text over 1024 bytes (codes empty-list, nothing-to-speak, not-a-string, text-too-long with index); batchSize outside 1..64 or not whole; stream() of a list', async () => {
      await ensureF32Engine();
      const r = await call(page, async () => {
        const outcome = async (f) => {
          try {
            await f();
            return { name: 'none' };
          } catch (e) {
            return { name: e.name, code: e.code, message: e.message, details: e.details };
          }
        };
        const ok = '[S1] Fine.';
        return {
          empty: await outcome(() => window.tts.generate([])),
          blank: await outcome(() => window.tts.generate([ok, ' \n '])),
          notString: await outcome(() => window.tts.generate([ok, 42])),
          // 1102 bytes as the tokenizer counts them: a speaker tag is one byte.
          tooLong: await outcome(() => window.tts.generate([ok, ok, `[S1] ${'a'.repeat(1100)}`])),
          sizes: await Promise.all([0, 65, 1.5, '2', NaN, null].map((batchSize) => outcome(() => window.tts.generate([ok], { batchSize })))),
          stream: await outcome(() => window.tts.stream([ok]).result),
        };
      });
      assert(r.empty.name === 'InvalidOptionError' && r.empty.code === 'empty-list', `empty: ${JSON.stringify(r.empty)}`);
      assert(r.blank.name === 'InvalidOptionError' && r.blank.code === 'nothing-to-speak' && r.blank.details.index === 1 && /text 1\b/.test(r.blank.message), `blank: ${JSON.stringify(r.blank)}`);
      assert(r.notString.name === 'InvalidOptionError' && r.notString.code === 'not-a-string' && r.notString.details.index === 1, `non-string: ${JSON.stringify(r.notString)}`);
      const t = r.tooLong;
      assert(t.name === 'InvalidOptionError' && t.code === 'text-too-long' && t.details.index === 2 && t.details.bytes === 1102 && t.details.limit === 1024, `too long: ${JSON.stringify(t)}`);
      r.sizes.forEach((e, i) => assert(e.name === 'InvalidOptionError' && /batchSize/.test(e.message), `batchSize case ${i}: ${JSON.stringify(e)}`));
      assert(r.stream.name === 'InvalidOptionError', `stream of a list: ${JSON.stringify(r.stream)}`);
      return `"${r.empty.message}" | "${r.blank.message}" | "${r.notString.message}" | "${t.message}" | "${r.sizes[0].message}"`;
    });

    await test('cancel a list between batches (AbortSignal from onText): no text after the abort, CancelledError with the texts handed out, the worker says cancelled and nothing follows', async () => {
      await ensureF32Engine();
      const r = await call(
        page,
        async ({ texts, options }) => {
          const messages = [];
          const listen = ({ data }) => messages.push(data.type);
          window.tts.worker.addEventListener('message', listen);
          const abort = new AbortController();
          const heard = [];
          let error = null;
          try {
            await window.tts.generate(texts, {
              ...options,
              batchSize: 1,
              signal: abort.signal,
              onText: (i) => {
                heard.push({ i, afterAbort: abort.signal.aborted });
                abort.abort();
              },
            });
          } catch (e) {
            error = { name: e.name, details: e.details };
          }
          await new Promise((r) => setTimeout(r, 1000)); // anything still on its way arrives now
          window.tts.worker.removeEventListener('message', listen);
          const end = messages.findIndex((m) => m === 'cancelled' || m === 'done');
          return { heard, error, ended: messages.filter((m) => m === 'cancelled' || m === 'done'), texts: messages.filter((m) => m === 'text').length, afterAck: messages.slice(end + 1) };
        },
        { texts: LIST, options: { ...GREEDY, maxNewTokens: 24 } },
      );
      assert(r.error?.name === 'CancelledError', `ended with ${JSON.stringify(r.error)}`);
      assert(r.heard.length === 1 && r.heard[0].i === 0 && !r.heard[0].afterAbort, `onText heard ${JSON.stringify(r.heard)}`);
      assert(r.error.details.texts === 1, `details ${JSON.stringify(r.error.details)}`);
      assert(r.ended.length === 1 && r.ended[0] === 'cancelled' && r.texts === 1, `the worker answered ${r.ended} after ${r.texts} text(s)`);
      assert(r.afterAck.length === 0, `${r.afterAck} after the worker's acknowledgement`);
      return `stopped after text 0 of ${LIST.length}; the worker sent ${r.texts} text and 'cancelled'`;
    });

    await test('an exception thrown by onText stops the list: generate rejects with it, no text after it, the worker says cancelled', async () => {
      await ensureF32Engine();
      const r = await call(
        page,
        async ({ texts, options }) => {
          const messages = [];
          const listen = ({ data }) => messages.push(data.type);
          window.tts.worker.addEventListener('message', listen);
          const heard = [];
          let error = null;
          try {
            await window.tts.generate(texts, {
              ...options,
              batchSize: 1,
              onText: (i) => {
                heard.push(i);
                throw new RangeError(`no room for text ${i}`);
              },
            });
          } catch (e) {
            error = { name: e.name, message: e.message };
          }
          await new Promise((r) => setTimeout(r, 1000));
          window.tts.worker.removeEventListener('message', listen);
          return { heard, error, ended: messages.filter((m) => m === 'cancelled' || m === 'done'), texts: messages.filter((m) => m === 'text').length };
        },
        { texts: LIST.slice(0, 2), options: { ...GREEDY, maxNewTokens: 24 } },
      );
      assert(r.error?.name === 'RangeError' && r.error.message === 'no room for text 0', `rejected with ${JSON.stringify(r.error)}`);
      assert(JSON.stringify(r.heard) === '[0]' && r.texts === 1, `onText heard ${JSON.stringify(r.heard)}, the worker sent ${r.texts} text(s)`);
      assert(JSON.stringify(r.ended) === '["cancelled"]', `the worker answered ${r.ended}`);
      return `rejected with "${r.error.message}"`;
    });

    await test(`list of ${LIST.length} texts, batchSize 2 (batches of 2 and 1), greedy in f32: one result per text in list order, onText as each batch finishes, batch progress; every text equals it generated alone`, async () => {
      await ensureF32Engine();
      const r = await call(
        page,
        async ({ texts, options }) => {
          const heard = [];
          const events = [];
          const results = await window.tts.generate(texts, { ...options, batchSize: 2, onText: (i, res) => heard.push({ i, samples: res.samples }), onProgress: (p) => events.push(p) });
          return { heard, events, results: results.map((x) => ({ ...x, audio: Array.from(x.audio) })) };
        },
        { texts: LIST, options: GREEDY },
      );
      assert(r.results.length === LIST.length, `${r.results.length} results`);
      assert(JSON.stringify(r.heard.map((h) => h.i)) === '[0,1,2]', `onText order ${JSON.stringify(r.heard)}`);
      r.results.forEach((x, i) => {
        assert(x.index === i && x.samplingRate === 44100 && x.segments === 1 && x.samples === x.audio.length && x.samples === r.heard[i].samples, `result ${i}: ${JSON.stringify({ ...x, audio: x.audio.length })}`);
        assert(x.steps > 0 && x.steps <= GREEDY.maxNewTokens && x.seconds > 0 && x.gpuMemory.peak > 0, `result ${i}: steps ${x.steps}, seconds ${x.seconds}, gpuMemory ${JSON.stringify(x.gpuMemory)}`);
        assert(x.audio.every(Number.isFinite), `text ${i}: NaN or infinite samples`);
      });
      const starts = r.events.filter((e) => e.rows === 0);
      assert(JSON.stringify(starts.map((e) => [e.batch, e.batches, e.firstItem, e.items])) === '[[0,2,0,2],[1,2,2,1]]', `batch starts ${JSON.stringify(starts)}`);
      for (let i = 1; i < r.events.length; i++) {
        const [a, b] = [r.events[i - 1], r.events[i]];
        assert(b.batch > a.batch || (b.batch === a.batch && b.rows >= a.rows && b.rows <= b.maxRows), `progress went back: ${JSON.stringify(a)} → ${JSON.stringify(b)}`);
      }
      const snrs = [];
      for (const [i, x] of r.results.entries()) snrs.push(await listParity(i, LIST[i], x.audio));
      return `${r.results.map((x) => `${x.samples} samples/${x.steps} steps`).join(', ')}; ${r.events.length} progress events; SNR against alone: ${snrs.map(fmtDb).join(', ')}`;
    });

    if (full) {
      await test('list with a voice prompt { audio, transcript }: the transcript is put in front of every text; PCM equals native dia-tts --batch --prompt-audio --prompt-text', async () => {
        await ensureF32Engine();
        const prompt = fixture('clone.prompt_pcm');
        const transcript = t0Text;
        const texts = LIST.slice(1);
        const r = await call(
          page,
          async ({ texts, options, prompt, transcript }) => {
            const out = await window.tts.generate(texts, { ...options, prompt: { audio: Float32Array.from(prompt), transcript } });
            return out.map((x) => ({ audio: Array.from(x.audio), steps: x.steps, seconds: x.seconds }));
          },
          { texts, options: GREEDY, prompt: Array.from(prompt), transcript },
        );
        assert(r.length === texts.length, `${r.length} results`);
        let refs;
        if (mock) {
          // The mock's generation of "<transcript> <text>" continuing the audio alone.
          refs = [];
          for (const text of texts) {
            const one = await call(page, async ({ text, options, prompt }) => Array.from((await window.tts.generate(text, { ...options, prompt: Float32Array.from(prompt) })).audio), { text: `${transcript} ${text}`, options: GREEDY, prompt: Array.from(prompt) });
            refs.push(Float32Array.from(one));
          }
        } else {
          const wav = join(work, 'voice-prompt-list.wav');
          writeWavF32(wav, prompt);
          refs = native.generateBatch('f32', texts, ['--prompt-audio', wav, '--prompt-text', transcript]);
        }
        const snrs = r.map((x, i) => {
          const snr = snrDb(refs[i], x.audio);
          assert(snr >= MIN_SNR_DB, `text ${i}: SNR ${snr.toFixed(1)} dB < ${MIN_SNR_DB} dB (${refs[i].length} samples, browser ${x.audio.length})`);
          return snr;
        });
        return `${r.map((x) => `${x.audio.length} samples/${x.steps} steps`).join(', ')}; SNR ${snrs.map(fmtDb).join(', ')} against ${mock ? 'the mock alone' : 'native dia-tts --batch'}`;
      });
    }

    await test('AudioWorklet fed by a SharedArrayBuffer ring on a cross-origin isolated page: exact consumption', async () => {
      assert(t0Audio, 'needs the t0 audio');
      const coi = await openPage(context, `${origin}/coi/test/index.html`);
      const r = await call(
        coi,
        async (audio) => {
          const samples = Float32Array.from(audio);
          const ctx = new AudioContext();
          await ctx.resume();
          const player = await window.dia.PcmPlayer.create(ctx);
          const playback = player.start();
          // Arrives in pieces, with pauses, as from a generation.
          for (let i = 0; i < samples.length; i += 2000) {
            playback.push(samples.subarray(i, i + 2000));
            await new Promise((r) => setTimeout(r, 5));
          }
          playback.end();
          const done = await playback.finished;
          await ctx.close();
          return { ...done, shared: player.shared, isolated: crossOriginIsolated, rate: ctx.sampleRate };
        },
        t0Audio,
      );
      await coi.close();
      assert(r.isolated && r.shared, `isolated ${r.isolated}, shared ring ${r.shared}`);
      assert(r.consumed === t0Audio.length && r.pushed === t0Audio.length && !r.stopped, JSON.stringify(r));
      return `${r.consumed} samples through the ring at ${r.rate} Hz, ${r.underruns} underrun(s)`;
    });

    await test('reload → weights from IndexedDB (SHA-256 verified) with zero network requests', async () => {
      await page.reload();
      await page.waitForSelector('body[data-ready=yes]');
      resetLog();
      const { info, events } = await load(page, f32);
      assert(log.length === 0, `${log.length} requests: ${log.map((e) => e.path).join(', ')}`);
      assert(info.fromCache && info.model.cached + info.codec.cached === info.tensors, JSON.stringify(info));
      assert(events.filter((e) => e.status === 'cached').length === info.tensors, 'a cached event per tensor');
      return `${info.tensors} tensors from IndexedDB in ${info.seconds.toFixed(2)} s`;
    });

    const manifest = (id) =>
      call(
        page,
        async (id) => {
          const req = (r) => new Promise((res, rej) => ((r.onsuccess = () => res(r.result)), (r.onerror = () => rej(r.error))));
          const db = await req(indexedDB.open('dia-webgpu'));
          const m = await req(db.transaction('manifests').objectStore('manifests').get(id));
          db.close();
          return m;
        },
        id,
      );
    const f32Id = `${base}|tiny/dia|main|f32`;

    await test('a corrupted cached tensor is detected (SHA-256) and only it is downloaded again', async () => {
      const name = 'model.decoder.layers.1.mlp.down_proj.weight';
      const before = (await manifest(f32Id)).tensors.find((t) => t.name === name);
      await call(
        page,
        async ({ id, name, hash }) => {
          await window.tts.dispose();
          window.tts = null;
          const req = (r) => new Promise((res, rej) => ((r.onsuccess = () => res(r.result)), (r.onerror = () => rej(r.error))));
          const db = await req(indexedDB.open('dia-webgpu'));
          const tx = db.transaction('tensors', 'readwrite');
          const rec = await req(tx.objectStore('tensors').get([id, name, hash]));
          const bytes = new Uint8Array(rec.bytes);
          bytes[7] ^= 0x40; // one flipped bit in an exponent
          tx.objectStore('tensors').put({ ...rec, bytes: bytes.buffer });
          await new Promise((res) => (tx.oncomplete = res));
          db.close();
        },
        { id: f32Id, name, hash: before.hash },
      );
      await page.reload();
      await page.waitForSelector('body[data-ready=yes]');
      resetLog();
      const { info, events } = await load(page, f32);
      const range = `bytes=${before.begin}-${before.end - 1}`;
      assert(JSON.stringify(info.model.corrupt) === JSON.stringify([name]), `corrupt: ${JSON.stringify(info.model.corrupt)}`);
      assert(events.some((e) => e.status === 'corrupt' && e.tensor === name), 'a corrupt progress event');
      assert(log.length === 1 && log[0].range === range && log[0].status === 206, `requests: ${JSON.stringify(log)} (expected one, ${range})`);
      const after = (await manifest(f32Id)).tensors.find((t) => t.name === name);
      assert(after.hash === before.hash, 'the re-downloaded bytes hash as the original download did');
      await page.reload();
      await page.waitForSelector('body[data-ready=yes]');
      resetLog();
      const again = await load(page, f32);
      assert(again.info.fromCache && again.info.model.corrupt.length === 0 && log.length === 0, 'the repaired record verifies');
      return `${name} re-fetched with one request (${range}); the repaired record verifies on the next load`;
    });

    await test('f16w: Dia matrices stored converted to f16 (half the bytes), norms and codec as they are', async () => {
      resetLog();
      const { info } = await load(page, { ...f32, dtype: 'f16w' });
      const f16 = await manifest(`${base}|tiny/dia|main|f16w`);
      const sizes = await call(
        page,
        async ({ id, names }) => {
          const req = (r) => new Promise((res, rej) => ((r.onsuccess = () => res(r.result)), (r.onerror = () => rej(r.error))));
          const db = await req(indexedDB.open('dia-webgpu'));
          const out = {};
          for (const [name, hash] of names) out[name] = (await req(db.transaction('tensors').objectStore('tensors').get([id, name, hash]))).bytes.byteLength;
          db.close();
          return out;
        },
        { id: f16.id, names: f16.tensors.map((t) => [t.name, t.hash]) },
      );
      for (const t of f16.tensors) {
        const src = t.end - t.begin;
        const want = t.shape.length === 2 ? src / 2 : src;
        assert(sizes[t.name] === want, `${t.name} [${t.shape}]: ${sizes[t.name]} bytes stored, ${want} expected`);
      }
      assert(info.numerics === 'f16w' && info.codec.downloaded === 0, 'the codec store is shared with f32');
      const stored = Object.values(sizes).reduce((a, b) => a + b, 0);
      const source = f16.tensors.reduce((a, t) => a + t.end - t.begin, 0);
      return `${f16.tensors.length} tensors: ${(stored / 1e6).toFixed(2)} MB stored for ${(source / 1e6).toFixed(2)} MB of f32; ${info.adapterInfo}`;
    });

    // f16w is the package's default and its kernels differ from f32's: one generation compiles them in
    // Tint and runs them, on the engine the previous test loaded.
    await test('f16w generation of t0 (f16-stored weights through the engine)', async () => {
      const r = await generate(page, t0Text, GREEDY);
      assert(r.audio.length > 0 && r.audio.every(Number.isFinite), 'finite audio');
      const same = r.audio.length === t0Pcm.length;
      return `${r.audio.length} samples in ${r.seconds.toFixed(1)} s; ${same && !mock ? `SNR vs t0.pcm ${fmtDb(snrDb(t0Pcm, r.audio))}` : 'another length than t0.pcm'} (f16 weights: informative)`;
    });

    // q8 / q4: each Dia tensor goes through the engine's storedTensors as it streams and only that stored form is
    // kept (one record per checkpoint tensor: a quantized matrix's two halves back to back, their layout in the
    // manifest). The arithmetic is f32 in both modes, so SwiftShader's lack of shader-f16 does not matter, and
    // greedy generations must equal the native engine's (dia-tts on the machine's Vulkan adapter).
    const recordSizes = (id, tensors) =>
      call(
        page,
        async ({ id, names }) => {
          const req = (r) => new Promise((res, rej) => ((r.onsuccess = () => res(r.result)), (r.onerror = () => rej(r.error))));
          const db = await req(indexedDB.open('dia-webgpu'));
          const out = {};
          for (const [name, hash] of names) out[name] = (await req(db.transaction('tensors').objectStore('tensors').get([id, name, hash])))?.bytes.byteLength ?? null;
          db.close();
          return out;
        },
        { id, names: tensors.map((t) => [t.name, t.hash]) },
      );
    // Under DIA_BROWSER_ONLY a test may run without the one that stored a mode's records: load it then.
    const ensureStored = async (mode) => {
      // Opening a database that does not exist would create it without its stores: look first.
      const exists = await call(page, async () => (await indexedDB.databases()).some((d) => d.name === 'dia-webgpu'));
      if (!exists || !(await manifest(`${base}|tiny/dia|main|${mode}`))?.tensors.every((t) => t.hash)) await load(page, { ...f32, dtype: mode });
    };
    const storedTotal = async (id) => {
      const m = await manifest(id);
      return Object.values(await recordSizes(id, m.tensors)).reduce((a, b) => a + b, 0);
    };
    const gpuAfterLoad = {}; // mode → info.gpuMemory.allocated
    const checkQuantizedStore = async (mode, info) => {
      const m = await manifest(`${base}|tiny/dia|main|${mode}`);
      const sizes = await recordSizes(m.id, m.tensors);
      for (const t of m.tensors) {
        const want = expectedParts(t, mode);
        const layout = t.parts ?? [{ name: t.name, dtype: t.dtype, shape: t.shape }];
        const same = JSON.stringify(layout.map(({ name, dtype, shape }) => ({ name, dtype, shape }))) === JSON.stringify(want);
        assert(same || mock, `${t.name} [${t.shape}] stored as ${JSON.stringify(layout)}, expected ${JSON.stringify(want)}`);
        const bytes = want.reduce((a, p) => a + partBytes(p), 0);
        assert(sizes[t.name] === bytes, `${t.name}: ${sizes[t.name]} bytes in its record, ${bytes} expected`);
      }
      const stored = Object.values(sizes).reduce((a, b) => a + b, 0);
      const f16 = await storedTotal(`${base}|tiny/dia|main|f16w`);
      assert(stored < f16, `${mode} stores ${stored} bytes, f16w ${f16}`);
      assert(info.model.storedBytes === stored, `info.model.storedBytes ${info.model.storedBytes}, records ${stored}`);
      assert(info.model.downloadBytes === m.tensors.reduce((a, t) => a + t.end - t.begin, 0), `info.model.downloadBytes ${info.model.downloadBytes}`);
      assert(info.gpuMemory?.allocated > 0 && info.gpuMemory.peak >= info.gpuMemory.allocated, `gpuMemory ${JSON.stringify(info.gpuMemory)}`);
      gpuAfterLoad[mode] = info.gpuMemory.allocated;
      return `${m.tensors.length} tensors, ${(stored / 1e6).toFixed(2)} MB stored (f16w ${(f16 / 1e6).toFixed(2)} MB, checkpoint ${(info.model.downloadBytes / 1e6).toFixed(2)} MB), GPU ${(info.gpuMemory.allocated / 1e6).toFixed(2)} MB after loading`;
    };
    const checkNative = (mode, audio) => {
      if (mock) return 'mock engine: not compared';
      const ref = native.generate(mode, t0Text);
      const snr = snrDb(ref, audio);
      assert(snr >= MIN_SNR_DB, `SNR ${snr.toFixed(1)} dB < ${MIN_SNR_DB} dB against the native ${mode} generation (${ref.length} samples, browser ${audio.length})`);
      return `SNR ${fmtDb(snr)} against native ${mode}`;
    };

    await test('q8: tensors quantized as they stream, only the stored form in IndexedDB (fewer bytes than f16w); generation of t0 equals the native q8 one', async () => {
      await ensureStored('f16w');
      resetLog();
      const { info } = await load(page, { ...f32, dtype: 'q8' });
      assert(info.numerics === 'q8' && info.numericsReason === 'requested' && info.codec.downloaded === 0, JSON.stringify(info));
      const store = await checkQuantizedStore('q8', info);
      const r = await generate(page, t0Text, GREEDY);
      const parity = checkNative('q8', r.audio);
      return `${store}; ${r.audio.length} samples, ${r.steps} steps in ${r.seconds.toFixed(1)} s, ${parity}`;
    });

    await test('q4: stored form in IndexedDB (MLP, logits head and cross-attention K/V in 4 bits, the rest of attention in 8), fewer bytes than q8; a reload loads it with zero requests; its generation of t0 equals the native q4 one', async () => {
      await ensureStored('f16w');
      await ensureStored('q8');
      const { info } = await load(page, { ...f32, dtype: 'q4' });
      assert(info.numerics === 'q4' && info.model.downloaded > 0, JSON.stringify(info));
      const store = await checkQuantizedStore('q4', info);
      const q8 = await storedTotal(`${base}|tiny/dia|main|q8`);
      assert(info.model.storedBytes < q8, `q4 stores ${info.model.storedBytes} bytes, q8 ${q8}`);
      await call(page, () => window.tts.dispose());
      await page.reload();
      await page.waitForSelector('body[data-ready=yes]');
      resetLog();
      const again = await load(page, { ...f32, dtype: 'q4' });
      assert(log.length === 0, `${log.length} requests: ${log.map((e) => e.path).join(', ')}`);
      assert(again.info.fromCache && again.info.model.downloaded === 0, JSON.stringify(again.info));
      assert(again.info.model.storedBytes === info.model.storedBytes, 'the same bytes came back from the store');
      // The generation runs on the engine fed from the store (records split back into their halves).
      const r = await generate(page, t0Text, GREEDY);
      const parity = checkNative('q4', r.audio);
      assert(r.gpuMemory?.peak >= again.info.gpuMemory.allocated, `gpuMemory after generating ${JSON.stringify(r.gpuMemory)}`);
      return `${store}; from the store: ${again.info.tensors} tensors, 0 requests; ${r.audio.length} samples, ${parity}, GPU peak ${(r.gpuMemory.peak / 1e6).toFixed(2)} MB`;
    });

    await test('GPU memory after loading: f32 > f16w > q8 > q4 (engine.memory())', async () => {
      for (const mode of ['f32', 'f16w']) {
        if (gpuAfterLoad[mode] === undefined) gpuAfterLoad[mode] = (await load(page, { ...f32, dtype: mode })).info.gpuMemory.allocated;
      }
      for (const mode of ['q8', 'q4']) {
        if (gpuAfterLoad[mode] === undefined) gpuAfterLoad[mode] = (await load(page, { ...f32, dtype: mode })).info.gpuMemory.allocated;
      }
      const order = ['f32', 'f16w', 'q8', 'q4'].map((m) => gpuAfterLoad[m]);
      assert(order.every((x, i) => i === 0 || x < order[i - 1]), `allocated after load: ${JSON.stringify(gpuAfterLoad)}`);
      return Object.entries(gpuAfterLoad).map(([m, b]) => `${m} ${(b / 1e6).toFixed(2)} MB`).join(', ');
    });

    await test('converted q4 checkpoint (dia-tts convert) loads as is with dtype auto: its halves stored unchanged, equal to quantizing on load; generation equals native q4; a reload makes no request', async () => {
      if (mock) return 'mock engine: skipped (needs the native converter)';
      const dir = native.convert('q4', convertedQ4);
      const file = readSafetensors(join(dir, 'model.safetensors'));
      await ensureStored('q4');
      resetLog();
      const { info } = await load(page, { ...f32, model: 'tiny-q4conv/dia', dtype: 'auto' });
      assert(info.numerics === 'q4' && info.converted === 'q4' && /converted for q4/.test(info.numericsReason), `${info.numerics}: ${info.numericsReason}`);
      // As is: every record is the file's tensor, byte for byte (its SHA-256), with no layout of its own.
      const conv = await manifest(`${base}|tiny-q4conv/dia|main|q4`);
      for (const t of conv.tensors) {
        assert(!t.parts && t.hash === sha256(tensorBytes(file, t.name)), `${t.name}: stored ${t.parts ? 'converted' : 'other bytes'}`);
      }
      assert(conv.tensors.some((t) => t.name.endsWith('.qweight')), 'the converted checkpoint has quantized halves');
      // Bit-identical to the browser's own quantization on load (the q4 store of the f32 checkpoint).
      const onLoad = await manifest(`${base}|tiny/dia|main|q4`);
      for (const t of onLoad.tensors) {
        const names = (t.parts ?? [t]).map((p) => p.name);
        const want = sha256(Buffer.concat(names.map((n) => tensorBytes(file, n))));
        assert(t.hash === want, `${t.name}: quantized on load ≠ converted (${names.join(' + ')})`);
      }
      const r = await generate(page, t0Text, GREEDY);
      const parity = checkNative('q4', r.audio);
      await call(page, () => window.tts.dispose());
      await page.reload();
      await page.waitForSelector('body[data-ready=yes]');
      resetLog();
      const again = await load(page, { ...f32, model: 'tiny-q4conv/dia', dtype: 'auto' });
      assert(log.length === 0 && again.info.numerics === 'q4', `${log.length} requests, ${again.info.numerics}`);
      return `${conv.tensors.length} tensors as is (${(info.model.storedBytes / 1e6).toFixed(2)} MB), ${onLoad.tensors.length} equal to quantizing on load; ${parity}; "${info.numericsReason}"`;
    });

    await test('sharded checkpoint (model.safetensors.index.json + 2 shards): same tensors, same bytes', async () => {
      resetLog();
      const { info } = await load(page, { ...f32, model: 'tiny-sharded/dia' });
      const paths = log.map((e) => e.path);
      assert(paths.some((p) => p.endsWith('/model.safetensors.index.json')), 'index fetched');
      assert(paths.filter((p) => /model-0000[12]-of-00002/.test(p)).length >= 4, 'both shard headers and data');
      const hashes = (m) => Object.fromEntries(m.tensors.map((t) => [t.name, t.hash]));
      const sharded = hashes(await manifest(`${base}|tiny-sharded/dia|main|f32`));
      const single = hashes(await manifest(f32Id));
      assert(JSON.stringify(sharded, Object.keys(single).sort()) === JSON.stringify(single, Object.keys(single).sort()), 'SHA-256 of every tensor equals the unsharded download');
      return `${Object.keys(sharded).length} model tensors from 2 shards, ${log.length} requests, hashes equal`;
    });

    if (full) {
      await test(`voice prompt (clone case): PCM matches clone.pcm (SNR ≥ ${MIN_SNR_DB} dB)`, async () => {
        await load(page, f32);
        const r = await call(
          page,
          async ({ text, opts, prompt }) => {
            const out = await window.tts.generate(text, { ...opts, prompt: Float32Array.from(prompt) });
            return { audio: Array.from(out.audio), steps: out.steps, seconds: out.seconds };
          },
          { text: t0Text, opts: GREEDY, prompt: Array.from(fixture('clone.prompt_pcm')) },
        );
        const snr = snrDb(mock ? Float32Array.from(r.audio) : fixture('clone.pcm'), r.audio);
        assert(snr >= MIN_SNR_DB, `SNR ${snr.toFixed(1)} dB`);
        return `${r.audio.length} samples, ${r.steps} steps in ${r.seconds.toFixed(1)} s, SNR ${fmtDb(snr)}`;
      });
    }

    await test('quota exceeded while storing weights → QuotaExceededError (f32, and q4 whose records come from the engine)', async () => {
      const messages = [];
      for (const dtype of ['f32', 'q4']) {
        const ctx = await browser.newContext();
        const p = await openPage(ctx, testPage);
        const cdp = await ctx.newCDPSession(p);
        await cdp.send('Storage.overrideQuotaForOrigin', { origin, quotaSize: 300000 });
        const err = await expectError(load(p, { ...f32, dtype }), 'QuotaExceededError');
        await ctx.close();
        messages.push(`${dtype}: ${err.message}`);
      }
      return messages.join(' | ');
    });

    await test('site data cleared while a load is under way → CacheEvictedError', async () => {
      const ctx = await browser.newContext();
      const p = await openPage(ctx, testPage);
      await call(
        p,
        (o) => {
          window.resolvingCodec = false;
          window.loading = window.dia.DiaTTS.load({ ...o, onProgress: (e) => (window.resolvingCodec ||= e.status === 'resolving' && e.component === 'codec') }).then(
            () => ({ name: 'none' }),
            (e) => ({ name: e.name, message: e.message }),
          );
        },
        { ...f32, model: 'tiny-slow/dia', codec: 'tiny-slow/dac' },
      );
      await p.waitForFunction(() => window.resolvingCodec, null, { timeout: 60000 });
      const cdp = await ctx.newCDPSession(p);
      await cdp.send('Storage.clearDataForOrigin', { origin, storageTypes: 'indexeddb' });
      const r = await p.evaluate(() => window.loading);
      await ctx.close();
      assert(r.name === 'CacheEvictedError', `${r.name}: ${r.message}`);
      return r.message;
    });

    await test('clearCache removes the stored weights (the next load downloads again)', async () => {
      await call(page, () => window.tts.dispose());
      await call(page, () => window.dia.DiaTTS.clearCache({ model: 'tiny/dac' }));
      resetLog();
      await load(page, f32);
      const fetched = new Set(log.map((e) => e.path.split('/')[3]));
      assert(fetched.size === 1 && fetched.has('dac'), `after clearing tiny/dac: ${[...fetched]}`);
      await call(page, () => window.dia.DiaTTS.clearCache());
      const dbs = await call(page, async () => (await indexedDB.databases()).map((d) => d.name));
      assert(!dbs.includes('dia-webgpu'), `databases: ${dbs}`);
      return 'per-repo and whole-store clearing';
    });

    await test('demo page: loads in q4 (download, stored and GPU sizes shown), long and short examples, generates (segment progress shown), draws the waveform, offers a WAV (screenshot)', async () => {
      const demo = await context.newPage();
      demo.on('pageerror', (e) => console.log(`  [demo error] ${e.message}`));
      const q = new URLSearchParams({ model: 'tiny/dia', codec: 'tiny/dac', base, dtype: 'q4' });
      await demo.goto(`${origin}/pkg/demo/index.html?${q}`);
      await demo.click('#load');
      await demo.waitForSelector('#status[data-state=ready]', { timeout: 120000 });
      const sizes = await demo.evaluate(() => ({ ...document.querySelector('#sizes').dataset, text: document.querySelector('#sizes').textContent }));
      assert(sizes.numerics === 'q4' && Number(sizes.stored) > 0 && Number(sizes.stored) < Number(sizes.download) && Number(sizes.gpu) > 0, `sizes shown: ${JSON.stringify(sizes)}`);
      // The long example is a script of several segments; the short one (generated below) fits one.
      await demo.click('#example-long');
      const long = await demo.evaluate(() => ({ bytes: new TextEncoder().encode(document.querySelector('#text').value).length, info: document.querySelector('#text-info').textContent }));
      assert(long.bytes > 500 && /segments/.test(long.info), `long example: ${JSON.stringify(long)}`);
      await demo.click('#example-short');
      await demo.click('summary:has-text("Sampling")');
      await demo.fill('#max-tokens', mock ? '40' : '24'); // 24 steps: the fewest that give audio, to keep it short
      await demo.fill('#temperature', '0');
      await demo.click('#generate');
      await demo.waitForSelector('#status[data-state=done]', { timeout: 300000 });
      const r = await demo.evaluate(async () => {
        const canvas = document.querySelector('#waveform');
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let inked = 0;
        for (let i = 0; i < pixels.length; i += 4) if (pixels[i] !== pixels[0] || pixels[i + 1] !== pixels[1] || pixels[i + 2] !== pixels[2]) inked++;
        const link = document.querySelector('#download');
        const wav = await (await fetch(link.href)).arrayBuffer();
        const status = document.querySelector('#status').dataset;
        const segment = document.querySelector('#segment').dataset;
        return { inked, wav: wav.byteLength, samples: Number(status.samples), segments: status.segments, shown: `${segment.segment}/${segment.segments}`, name: link.download, peak: Number(document.querySelector('#sizes').dataset.gpuPeak) };
      });
      await demo.screenshot({ path: join(artifacts, 'demo.png'), fullPage: true });
      await demo.close();
      assert(r.inked > 500, `only ${r.inked} waveform pixels drawn`);
      assert(r.wav === 44 + 2 * r.samples && r.samples > 0, `WAV of ${r.wav} bytes for ${r.samples} samples`);
      assert(r.peak >= Number(sizes.gpu), `GPU peak after generating ${r.peak} < ${sizes.gpu} after loading`);
      assert(r.segments === '1' && r.shown === '1/1', `segments ${r.segments}, progress shown ${r.shown}`);
      return `"${sizes.text}" ${r.samples} samples, ${r.inked} waveform pixels, ${r.name} (${r.wav} bytes); artifacts/demo.png`;
    });

    // The benchmark page needs the wasm engine's checkpointLayout, which the mock engine does not have.
    if (!mock) {
      await test('benchmark page (tiny config, q8, 24 steps): builds the model from random weights, times a first and a timed generation, shows the figures and a JSON report with sane fields (screenshot)', () =>
        benchPageTest(context, `${origin}/pkg/demo/bench.html`, join(artifacts, 'bench.png')),
      );
      await test('benchmark in node on Dawn (tests/browser/bench.mjs --config tiny --numerics q8 --batch 1,2 --json, SwiftShader): exit 0, a report like the page\'s, with batches of 1 and 2 texts timed', benchRunnerTest);
    }
  } finally {
    await browser.close();
    await server.close();
    rmSync(work, { recursive: true, force: true });
  }
}

await main().catch((e) => {
  results.push(false);
  console.log(`FAIL harness: ${e.stack ?? e}`);
});
const passed = results.filter(Boolean).length;
const failed = results.length - passed;
console.log(`${passed} passed, ${failed} failed${only ? ` (${leftOut} left out by DIA_BROWSER_ONLY=${only.source})` : ''}`);
process.exit(failed ? 1 : 0);
