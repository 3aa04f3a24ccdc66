// Tests of the browser benchmark (web/demo/bench.html, bench-core.js), run by e2e.mjs: checks in node of the
// model it builds (the full config is Dia 1.6B's real layout; random tensors of the right sizes, channel 0's
// EOS row zero), the page itself in headless Chromium and the Node + Dawn runner, both on the tiny config.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const core = await import(pathToFileURL(join(root, 'web/demo/bench-core.js')).href);

const assert = (condition, message) => {
  if (!condition) throw new Error(message);
};

/** The wasm engine's module in node (no WebGPU needed for checkpointLayout), from web/pkg as tests/browser/run builds it. */
let wasm = null;
async function engineModule() {
  if (!wasm) {
    wasm = await import(pathToFileURL(join(root, 'web/pkg/dia_webgpu.js')).href);
    await wasm.default({ module_or_path: readFileSync(join(root, 'web/pkg/dia_webgpu_bg.wasm')) });
  }
  return wasm;
}

const layoutOf = (w, config, numerics) => w.checkpointLayout(JSON.stringify(core.BENCH_CONFIGS[config].dia), JSON.stringify(core.BENCH_CONFIGS[config].dac), numerics);
const asMap = (list) => Object.fromEntries(list.map((t) => [t.name, JSON.stringify(t.shape)]));

function safetensorsShapes(file) {
  const buf = readFileSync(file);
  const header = JSON.parse(buf.subarray(8, 8 + Number(buf.readBigUInt64LE(0))).toString());
  delete header.__metadata__;
  return Object.fromEntries(Object.entries(header).map(([name, t]) => [name, JSON.stringify(t.shape)]));
}

function sameMaps(got, want, what) {
  const missing = Object.keys(want).filter((n) => !(n in got));
  const extra = Object.keys(got).filter((n) => !(n in want));
  const reshaped = Object.keys(want).filter((n) => n in got && got[n] !== want[n]);
  assert(!missing.length && !extra.length && !reshaped.length, `${what}: missing ${missing.slice(0, 3)}, extra ${extra.slice(0, 3)}, other shapes ${reshaped.slice(0, 3).map((n) => `${n} ${got[n]} ≠ ${want[n]}`)}`);
}

/** Every field of `part` (recursively) has its value in `whole`. */
function subsetOf(part, whole, what) {
  for (const [k, v] of Object.entries(part)) {
    if (v && typeof v === 'object' && !Array.isArray(v)) subsetOf(v, whole?.[k] ?? {}, `${what}.${k}`);
    else assert(JSON.stringify(v) === JSON.stringify(whole?.[k]), `${what}.${k}: ${JSON.stringify(v)} ≠ ${JSON.stringify(whole?.[k])}`);
  }
}

/** Node-side checks (need the wasm of web/pkg; not with the mock engine). `fixtures`: the tiny fixture directory. */
export function benchUnitTests(fixtures) {
  return [
    [
      'bench: the full config is Dia-1.6B-0626 + DAC 44.1 kHz (names and shapes equal ../shared/fixtures/real-layout.json); the tiny one the fixtures\'',
      async () => {
        const w = await engineModule();
        const real = JSON.parse(readFileSync(join(fixtures, '../real-layout.json'), 'utf8'));
        // Every field the benchmark's configs give has the value of the real ones (the rest are defaults).
        const readJson = (f) => JSON.parse(readFileSync(f, 'utf8'));
        subsetOf(core.BENCH_CONFIGS.full.dia, real.dia_config, 'full Dia config');
        subsetOf(core.BENCH_CONFIGS.full.dac, real.dac_config, 'full DAC config');
        subsetOf(core.BENCH_CONFIGS.tiny.dia, readJson(join(fixtures, 'dia/config.json')), 'tiny Dia config');
        subsetOf(core.BENCH_CONFIGS.tiny.dac, readJson(join(fixtures, 'dac/config.json')), 'tiny DAC config');
        const full = layoutOf(w, 'full', 'f16w');
        sameMaps(asMap(full.dia), Object.fromEntries(Object.entries(real.dia).map(([n, s]) => [n, JSON.stringify(s)])), 'full Dia');
        sameMaps(asMap(full.dac), Object.fromEntries(Object.entries(real.dac).map(([n, s]) => [n, JSON.stringify(s)])), 'full DAC');
        const tiny = layoutOf(w, 'tiny', 'f16w');
        sameMaps(asMap(tiny.dia), safetensorsShapes(join(fixtures, 'dia/model.safetensors')), 'tiny Dia');
        sameMaps(asMap(tiny.dac), safetensorsShapes(join(fixtures, 'dac/model.safetensors')), 'tiny DAC');
        return `${full.dia.length} + ${full.dac.length} tensors (full), ${tiny.dia.length} + ${tiny.dac.length} (tiny)`;
      },
    ],
    [
      'bench: weights per step of the full model (checkpointLayout) are the hand-counted ones in every mode',
      async () => {
        const w = await engineModule();
        // tests/weights.rs counts these from the 1.6B shapes.
        const want = { f32: 5_058_625_536, f16w: 2_529_312_768, q8: 1_343_697_408, q4: 881_238_528 };
        for (const [mode, bytes] of Object.entries(want)) assert(layoutOf(w, 'full', mode).stepWeightBytes === bytes, `${mode}: ${layoutOf(w, 'full', mode).stepWeightBytes} ≠ ${bytes}`);
        return Object.entries(want).map(([m, b]) => `${m} ${(b / 1e9).toFixed(2)} GB`).join(', ');
      },
    ],
    [
      'bench: random checkpoint: every tensor once with its size, N(0, 0.02) matrices with no two rows alike, norms and alphas 1, channel 0\'s EOS logits row zero',
      async () => {
        const w = await engineModule();
        const layout = layoutOf(w, 'tiny', 'q8');
        const cfg = core.BENCH_CONFIGS.tiny.dia;
        const seen = new Map();
        for (const t of core.randomCheckpoint(layout, cfg, 7)) {
          assert(!seen.has(`${t.part}:${t.name}`), `${t.name} twice`);
          seen.set(`${t.part}:${t.name}`, t);
          const values = new Float32Array(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength / 4);
          assert(t.dtype === 'F32' && values.length === t.shape.reduce((a, d) => a * d, 1), `${t.name}: ${values.length} values for [${t.shape}]`);
        }
        assert(seen.size === layout.dia.length + layout.dac.length, `${seen.size} tensors`);
        const values = (key) => {
          const t = seen.get(key);
          return { t, v: new Float32Array(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength / 4) };
        };
        const norm = values('dia:model.decoder.norm.weight').v;
        assert(norm.every((x) => x === 1), 'norms are 1');
        assert(values('dac:decoder.snake1.alpha').v.every((x) => x === 1), 'alphas are 1');
        const { t: logits, v: lv } = values('dia:logits_dense.weight');
        const cols = logits.shape[1];
        const eos = cfg.decoder_config.eos_token_id;
        const row = (r) => lv.subarray(r * cols, (r + 1) * cols);
        assert(row(eos).every((x) => x === 0), 'EOS row of channel 0 is zero');
        assert(row(eos - 1).some((x) => x !== 0) && row(eos + 1).some((x) => x !== 0) && row(cfg.decoder_config.vocab_size + eos).some((x) => x !== 0), 'only that row');
        const m = values('dia:model.decoder.layers.0.mlp.down_proj.weight');
        const [rows, width] = m.t.shape;
        const firsts = new Set(Array.from({ length: rows }, (_, r) => m.v[r * width]));
        assert(firsts.size === rows, `${rows - firsts.size} rows start alike`);
        const mean = m.v.reduce((a, x) => a + x, 0) / m.v.length;
        const std = Math.sqrt(m.v.reduce((a, x) => a + (x - mean) ** 2, 0) / m.v.length);
        assert(Math.abs(mean) < 0.002 && Math.abs(std - 0.02) < 0.002, `mean ${mean}, std ${std}`);
        return `${seen.size} tensors; a matrix's mean ${mean.toExponential(1)}, std ${std.toFixed(4)}`;
      },
    ],
    [
      'bench: bad settings are refused with a readable error',
      async () => {
        const cases = [
          [{ config: 'huge' }, /config must be/],
          [{ numerics: ['f8'] }, /f8 is not one of/],
          [{ numerics: [] }, /at least one mode/],
          [{ steps: 10 }, /steps must be a whole number ≥ 24/],
          [{ runs: 0 }, /runs must be/],
          [{ steps: 2.5 }, /steps must be/],
          [{ batches: [0] }, /each size must be a whole number from 1 to 64/],
          [{ batches: [65] }, /each size must be/],
          [{ batches: [1, NaN] }, /each size must be/],
          [{ batches: [2, 2] }, /given twice/],
          [{ batches: 8 }, /must be a list/],
          [{ experiments: ['fast'] }, /fast is not one of crossTables, attentionOFused/],
          [{ experiments: 'crossTables' }, /must be a list/],
          [{ experiments: ['crossTables=maybe'] }, /crossTables=maybe is not one of/],
          [{ experiments: ['crossTables=off', 'crossTables'] }, /crossTables is set both on and off/],
        ];
        for (const [o, message] of cases) {
          let error = null;
          try {
            core.benchOptions(o);
          } catch (e) {
            error = e.message;
          }
          assert(error && message.test(error), `${JSON.stringify(o)}: ${error}`);
        }
        const d = core.benchOptions({ config: 'tiny' });
        assert(d.numerics.join() === 'f16w,q8,q4,f32' && d.steps === 100 && d.runs === 3 && d.batches.length === 0 && d.experiments.length === 0 && new TextEncoder().encode(d.text).length === 100, JSON.stringify(d));
        return `${cases.length} refused`;
      },
    ],
  ];
}

/**
 * The page in headless Chromium on the tiny config (q8: the quickest mode on SwiftShader), through its query
 * parameters: the report's fields are there and sane, the table and the copyable JSON show it. The page is saved
 * as the `screenshot` file.
 */
export async function benchPageTest(context, pageUrl, screenshot) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const steps = 24;
  const q = new URLSearchParams({ config: 'tiny', numerics: 'q8', steps, runs: 1, warmup: steps, autorun: 1 });
  await page.goto(`${pageUrl}?${q}`);
  await page.waitForSelector('body[data-state=done], body[data-state=failed], body[data-state=unavailable]', { timeout: 400000 });
  const shown = await page.evaluate(() => ({
    state: document.body.dataset.state,
    error: document.querySelector('#error').textContent,
    report: window.benchReport,
    json: document.querySelector('#json').value,
    rows: [...document.querySelectorAll('#results tbody tr')].map((tr) => [...tr.cells].map((c) => c.textContent)),
    caps: document.querySelector('#caps').textContent,
  }));
  await page.screenshot({ path: screenshot, fullPage: true });
  await page.close();
  assert(shown.state === 'done', `page state ${shown.state}: ${shown.error} ${errors.join('; ')}`);
  const r = shown.report;
  assert(JSON.stringify(JSON.parse(shown.json)) === JSON.stringify(r), 'the JSON shown is the report');
  assert(r.config === 'tiny' && r.steps === steps && r.runs === 1 && r.textBytes === 100 && r.environment.runner === 'page' && r.environment.adapter.available, `report head ${JSON.stringify({ ...r, modes: undefined })}`);
  assert(r.modes.length === 1, `${r.modes.length} modes`);
  const m = r.modes[0];
  assert(m.ok && m.numerics === 'q8', `mode: ${JSON.stringify(m)}`);
  assert(m.load.tensors > 100 && m.load.bytes > 0 && m.load.stepWeightBytes > 0 && m.load.seconds > 0, `load ${JSON.stringify(m.load)}`);
  assert(/\(.*\); shader-f16/.test(m.adapter), `adapter ${m.adapter}`);
  for (const g of [m.firstGeneration, ...m.generations]) {
    // Random weights with the EOS row zeroed: every generation runs its full length and gives audio.
    assert(g.steps === steps && g.samples > 0 && g.chunks > 0, `generation ${JSON.stringify(g)}`);
    assert(g.firstAudioMs > 0 && g.firstAudioMs <= g.wallSeconds * 1000, `first audio ${g.firstAudioMs} ms of ${g.wallSeconds} s`);
    assert(Math.abs(g.stepsPerSecond - g.steps / g.wallSeconds) < 1e-9 && Math.abs(g.realTime - g.samples / 44100 / g.wallSeconds) < 1e-9, `rates ${JSON.stringify(g)}`);
  }
  assert(m.generations.length === 1, `${m.generations.length} timed generations`);
  assert(m.gpuMemory.peakBytes >= m.gpuMemory.allocatedBytes && m.gpuMemory.allocatedBytes > 0, `memory ${JSON.stringify(m.gpuMemory)}`);
  assert(m.median.stepsPerSecond === m.generations[0].stepsPerSecond, 'median of one run');
  assert(Math.abs(m.median.weightGBps - (m.load.stepWeightBytes * m.median.stepsPerSecond) / 1e9) < 1e-12, `GB/s ${m.median.weightGBps}`);
  assert(shown.rows.length === 1 && shown.rows[0][0] === 'q8' && shown.rows[0].length > 5, `table ${JSON.stringify(shown.rows)}`);
  return `${m.median.stepsPerSecond.toFixed(2)} steps/s, first audio ${m.median.firstAudioMs.toFixed(0)} ms (first generation ${m.firstGeneration.firstAudioMs.toFixed(0)} ms), peak ${(m.gpuMemory.peakBytes / 2 ** 20).toFixed(1)} MiB; table ${JSON.stringify(shown.rows[0])}`;
}

/**
 * The Node + Dawn runner (tests/browser/bench.mjs) on SwiftShader, tiny config, q8: exit status 0, and a JSON
 * report like the page's (the same module measures both), with batches of 1 and 2 texts (`--batch 1,2`).
 */
export function benchRunnerTest() {
  const icd = process.env.VK_ICD_FILENAMES ?? '/usr/lib/chromium/vk_swiftshader_icd.json';
  const steps = 24;
  const out = execFileSync(
    process.execPath,
    [join(here, 'bench.mjs'), '--config', 'tiny', '--numerics', 'q8', '--steps', String(steps), '--warmup', String(steps), '--runs', '1', '--batch', '1,2', '--json'],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 400000, env: { ...process.env, VK_ICD_FILENAMES: icd } },
  );
  const r = JSON.parse(out.trim().split('\n').at(-1));
  const m = r.modes[0];
  assert(r.environment.runner === 'node + dawn.node' && r.environment.adapter.available, `environment ${JSON.stringify(r.environment)}`);
  assert(r.modes.length === 1 && m.ok && m.numerics === 'q8', `modes ${JSON.stringify(r.modes)}`);
  assert(m.generations.length === 1 && m.generations[0].steps === steps && m.generations[0].samples > 0 && m.median.stepsPerSecond > 0, `generations ${JSON.stringify(m.generations)}`);
  assert(m.median.firstAudioMs > 0 && m.gpuMemory.peakBytes > 0 && m.median.weightGBps > 0, `figures ${JSON.stringify(m.median)}, ${JSON.stringify(m.gpuMemory)}`);
  // Batches: every text runs its full length (no EOS), a batch of 2 is one decoder pass of `steps` steps serving
  // both texts, and the aggregate rate counts both texts' steps.
  assert(JSON.stringify(r.batches) === '[1,2]' && m.batches?.map((b) => b.size).join() === '1,2', `batches ${JSON.stringify(m.batches)}`);
  for (const b of m.batches) {
    const g = b.runs[0];
    assert(b.runs.length === 1 && g.texts === b.size && g.batches === 1 && g.decoderSteps === steps && g.steps === b.size * steps && g.samples > 0, `batch ${b.size}: ${JSON.stringify(g)}`);
    assert(Math.abs(g.stepsPerSecond - g.steps / g.wallSeconds) < 1e-9 && g.decoderSeconds > 0 && g.decoderSeconds <= g.wallSeconds, `batch ${b.size} rates ${JSON.stringify(g)}`);
  }
  const [one, two] = m.batches;
  assert(one.ratioToBatch1 === 1 && Math.abs(two.ratioToBatch1 - two.median.stepsPerSecond / one.median.stepsPerSecond) < 1e-12, `ratios ${one.ratioToBatch1}, ${two.ratioToBatch1}`);
  return `${m.median.stepsPerSecond.toFixed(2)} steps/s, first audio ${m.median.firstAudioMs.toFixed(0)} ms on ${r.environment.adapter.info.description ?? 'the adapter'}; batch 2 ${two.median.stepsPerSecond.toFixed(2)} aggregate steps/s (${two.ratioToBatch1.toFixed(2)}× batch 1)`;
}
