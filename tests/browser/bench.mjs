#!/usr/bin/env node
// The browser benchmark (web/demo/bench.html) outside a browser: the same measuring module
// (web/demo/bench-core.js) and the same wasm engine, on Dawn, Chrome's WebGPU implementation, through the
// `webgpu` npm package's dawn.node. For machines without a browser (a GPU server), and for the figures of
// docs/performance.md. See docs/browser-bench.md.
//
//   node tests/browser/bench.mjs [--config tiny|full] [--numerics f16w,q8,q4,f32] [--steps N] [--runs R]
//        [--warmup N] [--seed N] [--text TEXT] [--json] [--json-out FILE] [--pkg DIR] [--dawn FILE]
//        [--dawn-flag NAME=VALUE]... [--timeline] [--batch B,B...] [--experiment NAME,NAME...]
//
// --config full (default): Dia 1.6B + DAC 44.1 kHz from random weights; tiny: the test fixtures' sizes.
// --numerics: modes in order (default f16w,q8,q4,f32), a fresh engine each; a mode that fails is reported and
//   the next one runs. --steps: decoder steps per timed generation (default 500 full, 100 tiny), after one
//   --warmup generation (default 40 steps; the first after loading). --runs: timed generations per mode (3).
// --batch: also time lists of B copies of the text spoken as one batch (generateBatch, batchSize B), per size a
//   warm-up and --runs timed calls, after the mode's generations: aggregate steps/s (every text's steps over the
//   wall time, each text's codec included) and the ratio to batch 1 (give 1 among the sizes), e.g. --batch 1,8.
// --experiment: switch the engine's experiments in every mode (DiaEngine.setExperiment: crossTables,
//   attentionOFused; NAME or NAME=on forces one on, NAME=off off), to compare with a run without.
// --timeline: log each timed generation's first readbacks and chunks (ms from the call: rows back, chunk out).
// --json: the report (one JSON object) on stdout, the progress on stderr; --json-out FILE: the report to FILE too
//   (written also when the run fails part-way).
// --pkg: the wasm-bindgen --target web output (default web/pkg; tests/browser/run and web/README.md build it).
// --dawn: a dawn.node file (default: the `webgpu` package of tests/browser/node_modules); --dawn-flag: Dawn
//   toggles such as backend=vulkan or enable-dawn-features=disable_robustness.
// Linux without a GPU: Dawn refuses lavapipe; SwiftShader works (VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json).
// Exit status: 0 when every mode ran, 1 when one failed, 2 on bad arguments or no WebGPU adapter.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const { runBenchmark, benchOptions, summaryRows, SUMMARY_COLUMNS } = await import(pathToFileURL(path.join(root, 'web/demo/bench-core.js')).href);

function usage(message) {
  if (message) console.error(`bench.mjs: ${message}`);
  const lines = fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1);
  const head = lines.slice(0, lines.findIndex((l) => !l.startsWith('//')));
  (message ? console.error : console.log)(head.map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
  process.exit(message ? 2 : 0);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      config: { type: 'string', default: 'full' },
      numerics: { type: 'string' },
      steps: { type: 'string' },
      runs: { type: 'string' },
      warmup: { type: 'string' },
      seed: { type: 'string' },
      text: { type: 'string' },
      json: { type: 'boolean', default: false },
      timeline: { type: 'boolean', default: false },
      batch: { type: 'string' },
      experiment: { type: 'string' },
      'json-out': { type: 'string' },
      pkg: { type: 'string' },
      dawn: { type: 'string' },
      'dawn-flag': { type: 'string', multiple: true, default: [] },
      help: { type: 'boolean', short: 'h', default: false },
    },
  }));
} catch (e) {
  usage(e.message);
}
if (args.help) usage();

const whole = (name) => {
  if (args[name] === undefined) return undefined;
  const v = Number(args[name]);
  if (!Number.isInteger(v)) usage(`--${name} must be a whole number (got ${args[name]})`);
  return v;
};
let options;
try {
  options = benchOptions({
    config: args.config,
    numerics: args.numerics?.split(',').map((s) => s.trim()),
    steps: whole('steps'),
    runs: whole('runs'),
    warmupSteps: whole('warmup'),
    seed: whole('seed'),
    text: args.text,
    timeline: args.timeline,
    batches: args.batch?.split(',').map((s) => (s.trim() === '' ? NaN : Number(s))),
    experiments: args.experiment?.split(',').map((s) => s.trim()),
  });
} catch (e) {
  usage(e.message);
}

const log = (line) => (args.json ? console.error(line) : console.log(line));
let report = null;
const partial = { error: null, modes: [] };
function writeJsonOut(r) {
  if (args['json-out']) fs.writeFileSync(args['json-out'], JSON.stringify(r, null, 1) + '\n');
}

// A Rust panic traps the wasm instance inside a task no promise of ours sees: fail with the panic's text (which
// the engine's panic hook printed just before) and keep what was measured.
let lastPanic = null;
const consoleError = console.error.bind(console);
console.error = (...a) => {
  const text = a.map(String).join(' ');
  if (text.includes('panicked at')) lastPanic = text.split('\n\nStack:')[0].trim();
  consoleError(...a);
};
process.on('uncaughtException', (e) => {
  partial.error = lastPanic ? `engine panic: ${lastPanic}` : String(e?.stack ?? e);
  consoleError(`bench.mjs: FAILED: ${partial.error}`);
  writeJsonOut(report ?? partial);
  process.exit(1);
});

// Stopped by a timeout (bench-gpu.sh) or by hand: keep the modes done.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    partial.error = `stopped by ${signal}`;
    consoleError(`bench.mjs: ${partial.error}; ${partial.modes.length} mode(s) done`);
    writeJsonOut({ ...partial, incomplete: true });
    process.exit(1);
  });
}

// ---------------------------------------------------------------- WebGPU in node, as a page has it

async function setUpWebGPU() {
  let dawn;
  if (args.dawn) {
    dawn = createRequire(import.meta.url)(path.resolve(args.dawn));
  } else {
    try {
      dawn = await import('webgpu');
    } catch (e) {
      usage(`the npm package webgpu is missing (run tests/setup, or pass --dawn PATH/dawn.node): ${e.message}`);
    }
  }
  Object.assign(globalThis, dawn.globals);
  const gpu = dawn.create(args['dawn-flag']);
  // wgpu's web backend looks for navigator.gpu in a Window or a WorkerGlobalScope: node (v20) has neither.
  Object.defineProperty(globalThis, 'navigator', { value: { gpu, userAgent: `node ${process.version}; dawn.node` }, configurable: true, writable: true });
  globalThis.WorkerGlobalScope ??= class WorkerGlobalScope {};
  if (!(await gpu.requestAdapter())) {
    consoleError('bench.mjs: Dawn found no WebGPU adapter. On Linux it needs a Vulkan driver: a GPU\'s, or SwiftShader (VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json); Dawn refuses lavapipe.');
    process.exit(2);
  }
}

async function loadEngine() {
  const dir = path.resolve(args.pkg ?? path.join(root, 'web/pkg'));
  const glue = path.join(dir, 'dia_webgpu.js');
  const wasm = path.join(dir, 'dia_webgpu_bg.wasm');
  for (const f of [glue, wasm]) {
    if (!fs.existsSync(f)) usage(`${f} is missing: build the engine (cargo build --release --target wasm32-unknown-unknown --lib, then wasm-bindgen --target web --out-dir web/pkg), or pass --pkg DIR`);
  }
  const engine = await import(pathToFileURL(glue).href);
  await engine.default({ module_or_path: fs.readFileSync(wasm) });
  return engine;
}

// ---------------------------------------------------------------- main

await setUpWebGPU();
const engine = await loadEngine();
log(`config ${options.config}, numerics ${options.numerics.join(',')}, ${options.runs} run(s) of ${options.steps} steps after a ${options.warmupSteps}-step warm-up${options.batches.length ? `; batches of ${options.batches.join(', ')}` : ''}${options.experiments.length ? `; experiments ${options.experiments.join(', ')}` : ''}`);
report = await runBenchmark(engine, {
  ...options,
  environment: { runner: 'node + dawn.node', node: process.version, dawnFlags: args['dawn-flag'], platform: `${process.platform}-${process.arch}` },
  log,
  onMode: (mode) => {
    partial.modes.push(mode);
    writeJsonOut({ ...partial, incomplete: true });
  },
});
writeJsonOut(report);

const adapter = report.environment.adapter;
const rows = summaryRows(report);
log('');
log(`adapter: ${[adapter.info?.vendor, adapter.info?.architecture, adapter.info?.description].filter(Boolean).join(' | ') || '(unnamed)'}${adapter.info?.isFallbackAdapter ? ' (fallback)' : ''}; ${report.model}; ${report.steps} steps, ${report.textBytes}-byte text`);
const widths = SUMMARY_COLUMNS.map(([key, title]) => Math.max(title.length, ...rows.map((r) => String(r[key] ?? '').length)));
log(SUMMARY_COLUMNS.map(([, title], i) => title.padEnd(widths[i])).join('  '));
for (const r of rows) {
  log(r.error ? `${r.numerics.padEnd(widths[0])}  FAILED: ${r.error}` : SUMMARY_COLUMNS.map(([key], i) => String(r[key]).padEnd(widths[i])).join('  '));
}
if (args.json) console.log(JSON.stringify(report));
delete globalThis.navigator; // dawn.node keeps node alive while navigator.gpu is reachable
process.exit(report.modes.every((m) => m.ok) ? 0 : 1);
