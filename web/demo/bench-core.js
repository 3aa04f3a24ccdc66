// The browser benchmark's measuring logic, shared by the page (bench.html) and the Node + Dawn runner
// (tests/browser/bench.mjs): it builds Dia and the DAC codec from generated random weights (no download) on
// this machine's WebGPU device, one engine per numerics mode, and times whole generations (streaming codec
// included). No DOM, no Node APIs: the caller passes in the engine module (the wasm-bindgen output, initialised).

/** Model configs (the HF config.json schema). `full`: Dia-1.6B-0626 and DAC 44.1 kHz, the sizes users run. */
export const BENCH_CONFIGS = {
  full: {
    label: 'Dia 1.6B + DAC 44.1 kHz (full size)',
    dia: {
      model_type: 'dia',
      delay_pattern: [0, 8, 9, 10, 11, 12, 13, 14, 15],
      norm_eps: 1e-5,
      encoder_config: {
        model_type: 'dia_encoder',
        hidden_size: 1024,
        intermediate_size: 4096,
        num_hidden_layers: 12,
        num_attention_heads: 16,
        num_key_value_heads: 16,
        head_dim: 128,
        max_position_embeddings: 1024,
        vocab_size: 256,
        norm_eps: 1e-5,
        hidden_act: 'silu',
        rope_parameters: { rope_theta: 10000.0, rope_type: 'default' },
      },
      decoder_config: {
        model_type: 'dia_decoder',
        hidden_size: 2048,
        intermediate_size: 8192,
        num_hidden_layers: 18,
        num_attention_heads: 16,
        num_key_value_heads: 4,
        head_dim: 128,
        cross_num_attention_heads: 16,
        cross_num_key_value_heads: 16,
        cross_head_dim: 128,
        cross_hidden_size: 1024,
        max_position_embeddings: 3072,
        vocab_size: 1028,
        num_channels: 9,
        norm_eps: 1e-5,
        hidden_act: 'silu',
        rope_parameters: { rope_theta: 10000.0, rope_type: 'default' },
        eos_token_id: 1024,
        pad_token_id: 1025,
        bos_token_id: 1026,
      },
    },
    dac: {
      model_type: 'dac',
      sampling_rate: 44100,
      hop_length: 512,
      encoder_hidden_size: 64,
      decoder_hidden_size: 1536,
      hidden_size: 1024,
      downsampling_ratios: [2, 4, 8, 8],
      upsampling_ratios: [8, 8, 4, 2],
      n_codebooks: 9,
      codebook_size: 1024,
      codebook_dim: 8,
    },
  },
  // The test fixtures' dimensions (assets/tiny): seconds on a software adapter.
  tiny: {
    label: 'tiny test model (2 + 2 layers)',
    dia: {
      model_type: 'dia',
      delay_pattern: [0, 8, 9, 10, 11, 12, 13, 14, 15],
      norm_eps: 1e-5,
      encoder_config: {
        model_type: 'dia_encoder',
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 4,
        head_dim: 16,
        max_position_embeddings: 1024,
        vocab_size: 256,
        norm_eps: 1e-5,
        hidden_act: 'silu',
        rope_parameters: { rope_theta: 10000.0, rope_type: 'default' },
      },
      decoder_config: {
        model_type: 'dia_decoder',
        hidden_size: 96,
        intermediate_size: 192,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        cross_num_attention_heads: 4,
        cross_num_key_value_heads: 4,
        cross_head_dim: 16,
        cross_hidden_size: 64,
        max_position_embeddings: 3072,
        vocab_size: 1028,
        num_channels: 9,
        norm_eps: 1e-5,
        hidden_act: 'silu',
        rope_parameters: { rope_theta: 10000.0, rope_type: 'default' },
        eos_token_id: 1024,
        pad_token_id: 1025,
        bos_token_id: 1026,
      },
    },
    dac: {
      model_type: 'dac',
      sampling_rate: 44100,
      hop_length: 512,
      encoder_hidden_size: 4,
      decoder_hidden_size: 32,
      hidden_size: 64,
      downsampling_ratios: [2, 4, 8, 8],
      upsampling_ratios: [8, 8, 4, 2],
      n_codebooks: 9,
      codebook_size: 1024,
      codebook_dim: 8,
    },
  },
};

export const NUMERICS = ['f16w', 'q8', 'q4', 'f32'];
/** 100 bytes of dialogue: the text length of the project's time-to-first-audio target. */
export const BENCH_TEXT = '[S1] Dia runs in your browser, on your own GPU. [S2] How fast is it, then? [S1] This page will tell.';
export const SAMPLE_RATE = 44100;
/** The fewest decoder steps that give audio: the delay pattern holds 15 rows back, and the codec then needs a window. */
export const MIN_STEPS = 24;

/** Checks and fills in the options of `runBenchmark`; throws a readable Error on a bad value. */
export function benchOptions(o = {}) {
  const config = o.config ?? 'full';
  if (!BENCH_CONFIGS[config]) throw new Error(`config must be ${Object.keys(BENCH_CONFIGS).join(' or ')} (got ${config})`);
  const numerics = o.numerics ?? NUMERICS;
  if (!Array.isArray(numerics) || numerics.length === 0) throw new Error('numerics: give at least one mode');
  for (const n of numerics) if (!NUMERICS.includes(n)) throw new Error(`numerics: ${n} is not one of ${NUMERICS.join(', ')}`);
  const whole = (name, value, min) => {
    if (!Number.isInteger(value) || value < min) throw new Error(`${name} must be a whole number ≥ ${min} (got ${value})`);
    return value;
  };
  const steps = whole('steps', o.steps ?? (config === 'full' ? 500 : 100), MIN_STEPS);
  const warmupSteps = whole('warmupSteps', o.warmupSteps ?? 40, MIN_STEPS);
  return {
    config,
    numerics: [...numerics],
    steps,
    runs: whole('runs', o.runs ?? 3, 1),
    warmupSteps,
    seed: whole('seed', o.seed ?? 42, 0),
    text: o.text ?? BENCH_TEXT,
    timeline: Boolean(o.timeline),
    batches: batchSizes(o.batches ?? []),
    experiments: experimentNames(o.experiments ?? []),
  };
}

/**
 * The engine's experiments a benchmark may switch (`DiaEngine.setExperiment`): `NAME` or `NAME=on` forces one on,
 * `NAME=off` off (crossTables is on by default where its tables are no larger than the weights they replace); the
 * others keep the engine's defaults.
 */
export const EXPERIMENTS = ['crossTables', 'attentionOFused'];

/** An experiment setting's name and state. */
function experimentSetting(setting) {
  const [name, state = 'on', ...rest] = setting.split('=');
  return { name, on: state === 'on', valid: EXPERIMENTS.includes(name) && (state === 'on' || state === 'off') && rest.length === 0 };
}

function experimentNames(names) {
  if (!Array.isArray(names)) throw new Error('experiments must be a list of names');
  const states = new Map();
  for (const n of names) {
    const s = typeof n === 'string' ? experimentSetting(n) : { valid: false };
    if (!s.valid) throw new Error(`experiments: ${n} is not one of ${EXPERIMENTS.join(', ')} (each optionally =on or =off)`);
    if (states.has(s.name) && states.get(s.name) !== s.on) throw new Error(`experiments: ${s.name} is set both on and off`);
    states.set(s.name, s.on);
  }
  // One setting per experiment, as `NAME` (on) or `NAME=off`.
  return [...states].map(([name, on]) => (on ? name : `${name}=off`));
}

/** The largest list `generateBatch` takes at once (its `batchSize` limit). */
export const MAX_BATCH = 64;

function batchSizes(sizes) {
  if (!Array.isArray(sizes)) throw new Error('batches must be a list of batch sizes');
  for (const b of sizes) {
    if (!Number.isInteger(b) || b < 1 || b > MAX_BATCH) throw new Error(`batches: each size must be a whole number from 1 to ${MAX_BATCH} (got ${b})`);
  }
  if (new Set(sizes).size !== sizes.length) throw new Error('batches: a size is given twice');
  return [...sizes];
}

// ---------------------------------------------------------------- random weights

/** splitmix32: a small seeded generator of uniform values in [0, 1). */
function uniformSource(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  };
}

/**
 * A table of N(0, std) draws whose length is prime: a tensor is the table repeated from a random start, so no two
 * rows of a matrix are equal, yet nothing bigger than one tensor is ever made.
 */
const TABLE_LENGTH = 65521;
function normalTable(uniform, std) {
  const table = new Float32Array(TABLE_LENGTH);
  for (let i = 0; i < TABLE_LENGTH; i += 2) {
    const radius = Math.sqrt(-2 * Math.log(Math.max(uniform(), 1e-12)));
    const angle = 2 * Math.PI * uniform();
    table[i] = std * radius * Math.cos(angle);
    if (i + 1 < TABLE_LENGTH) table[i + 1] = std * radius * Math.sin(angle);
  }
  return table;
}

/** `out` filled with `table` repeated, starting at table[start]. */
function fillRepeating(out, table, start) {
  let at = 0;
  let from = start;
  while (at < out.length) {
    const n = Math.min(table.length - from, out.length - at);
    out.set(table.subarray(from, from + n), at);
    at += n;
    from = 0;
  }
  return out;
}

const elementsOf = (shape) => shape.reduce((a, d) => a * d, 1);
const bytesOf = (array) => new Uint8Array(array.buffer, array.byteOffset, array.byteLength);

/**
 * The tensors of a random checkpoint of `layout` (checkpointLayout's), one at a time, all F32 (the engine stores
 * them in the mode's own format, as it would a real checkpoint's): matrices and codec tensors N(0, 0.02), Dia's
 * norms and the codec's snake alphas 1.0. In `logits_dense`, channel 0's EOS row is zero: its logit is then 0,
 * below the CFG filter's top-45 cut on random weights, so every generation runs the full number of steps instead
 * of stopping at a random EOS.
 */
export function* randomCheckpoint(layout, diaConfig, seed) {
  const uniform = uniformSource(seed);
  const table = normalTable(uniform, 0.02);
  const start = () => Math.floor(uniform() * TABLE_LENGTH);
  const eosRow = diaConfig.decoder_config.eos_token_id; // channel 0's rows come first: row c·vocab + token
  const ones = (shape) => new Float32Array(elementsOf(shape)).fill(1);
  const random = (shape) => fillRepeating(new Float32Array(elementsOf(shape)), table, start());
  for (const { name, shape } of layout.dia) {
    const values = shape.length === 1 ? ones(shape) : random(shape);
    if (name === 'logits_dense.weight') values.fill(0, eosRow * shape[1], (eosRow + 1) * shape[1]);
    yield { part: 'dia', name, dtype: 'F32', shape, bytes: bytesOf(values) };
  }
  for (const { name, shape } of layout.dac) {
    yield { part: 'dac', name, dtype: 'F32', shape, bytes: bytesOf(name.endsWith('.alpha') ? ones(shape) : random(shape)) };
  }
}

// ---------------------------------------------------------------- WebGPU device

/**
 * Watches `GPUAdapter.prototype.requestDevice` (the engine asks through wgpu, out of our reach otherwise): the
 * benchmark then knows the engine's device, to let the queue drain while gigabytes are uploaded and to destroy
 * it between modes. Installed once per global scope; `GPUAdapter` must be a global (as in browsers, and in Node
 * once dawn.node's globals are).
 */
function deviceWatch() {
  const key = Symbol.for('dia-webgpu.bench.deviceWatch');
  if (globalThis[key]) return globalThis[key];
  const watch = { device: null };
  const proto = globalThis.GPUAdapter?.prototype;
  if (proto?.requestDevice) {
    const requestDevice = proto.requestDevice;
    proto.requestDevice = async function (descriptor) {
      const device = await requestDevice.call(this, descriptor);
      watch.device = device;
      return device;
    };
  }
  globalThis[key] = watch;
  return watch;
}

/** The adapter as the page sees it: info, the features and limits that matter to the engine. */
export async function describeAdapter(gpu = globalThis.navigator?.gpu) {
  if (!gpu) return { available: false };
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) return { available: false };
  const info = {};
  for (const k of ['vendor', 'architecture', 'device', 'description', 'isFallbackAdapter', 'subgroupMinSize', 'subgroupMaxSize']) {
    if (adapter.info?.[k] !== undefined && adapter.info[k] !== '') info[k] = adapter.info[k];
  }
  const limits = {};
  for (const k of ['maxStorageBufferBindingSize', 'maxBufferSize', 'maxComputeWorkgroupStorageSize', 'maxComputeInvocationsPerWorkgroup']) limits[k] = adapter.limits[k];
  return { available: true, info, features: [...adapter.features].sort(), limits };
}

// ---------------------------------------------------------------- measuring

const now = () => performance.now();
const median = (xs) => {
  const s = xs.filter((x) => x !== null && Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return null;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
/** Lets the page repaint (and Node run its timers) during a long load. */
const pause = () => new Promise((resolve) => (typeof setImmediate === 'function' ? setImmediate(resolve) : setTimeout(resolve, 0)));
/** Uploads are staged by the WebGPU implementation until the GPU has taken them: wait for it every so often. */
const DRAIN_BYTES = 512 << 20;

/** One whole generation: wall time, the first audio's time, the engine's own figures. */
async function timeGeneration(engine, text, steps, seed) {
  let firstAudio = null;
  let chunks = 0;
  const compiledBefore = engine.pipelineCompiles?.() ?? null;
  // When rows came back and chunks went out (ms from the call): where the time to first audio goes.
  const timeline = [];
  const t0 = now();
  const onChunk = () => {
    firstAudio ??= now() - t0;
    chunks++;
    if (timeline.length < 64) timeline.push({ ms: now() - t0, chunk: chunks });
  };
  const onProgress = (p) => {
    if (timeline.length < 64) timeline.push({ ms: now() - t0, rows: p.rows });
  };
  const r = await engine.generate(text, { seed, maxNewTokens: steps }, undefined, onChunk, undefined, onProgress);
  const wallSeconds = (now() - t0) / 1000;
  const audioSeconds = r.samples / SAMPLE_RATE;
  return {
    steps: r.steps,
    wallSeconds,
    stepsPerSecond: r.steps / wallSeconds,
    firstAudioMs: firstAudio,
    chunks,
    samples: r.samples,
    audioSeconds,
    realTime: audioSeconds / wallSeconds,
    // Pipelines compiled during this generation (0 when loading prepared them all).
    pipelinesCompiled: compiledBefore === null ? null : engine.pipelineCompiles() - compiledBefore,
    timeline,
  };
}

/**
 * One `generateBatch` call on `size` copies of `text` (a batch of `size` texts per decoder step; text i samples as
 * item i): wall time, and when the decoder's last rows came back (its last progress report: the codec's work on
 * each text's whole audio follows). Steps per second are aggregate: every text's steps over the time.
 */
async function timeBatch(engine, text, size, steps, seed) {
  let lastRows = null;
  let texts = 0;
  let textSteps = 0;
  const t0 = now();
  const onText = (_index, _pcm, steps) => {
    texts++;
    textSteps += steps;
  };
  const onProgress = (p) => {
    if (p.rows > 0) lastRows = now() - t0;
  };
  const r = await engine.generateBatch(Array(size).fill(text), { seed, maxNewTokens: steps, batchSize: size }, undefined, onText, undefined, onProgress);
  const wallSeconds = (now() - t0) / 1000;
  const decoderSeconds = lastRows === null ? null : lastRows / 1000;
  return {
    size,
    texts,
    batches: r.batches,
    // Decoder steps run (a batch's step serves all its texts), and the texts' steps in all.
    decoderSteps: r.steps,
    steps: textSteps,
    wallSeconds,
    stepsPerSecond: textSteps / wallSeconds,
    decoderSeconds,
    decoderStepsPerSecond: decoderSeconds === null ? null : textSteps / decoderSeconds,
    samples: r.samples,
  };
}

/**
 * The `batches` part of a mode's report: per batch size a warm-up call (new sizes may compile pipelines) and `runs`
 * timed ones; the median aggregate steps/s and its ratio to batch 1's (when 1 is among the sizes).
 */
async function timeBatches(engine, o, log) {
  const out = [];
  for (const size of o.batches) {
    await timeBatch(engine, o.text, size, o.warmupSteps, o.seed);
    const runs = [];
    for (let k = 0; k < o.runs; k++) {
      const b = await timeBatch(engine, o.text, size, o.steps, o.seed + 1 + k);
      runs.push(b);
      log(`batch ${size}: run ${k + 1}/${o.runs}: ${b.steps} steps of ${b.texts} texts in ${b.batches} batch(es), ${b.stepsPerSecond.toFixed(1)} aggregate steps/s (${b.decoderStepsPerSecond?.toFixed(1) ?? '?'} to the decoder's last rows)`);
    }
    out.push({
      size,
      runs,
      median: { stepsPerSecond: median(runs.map((b) => b.stepsPerSecond)), decoderStepsPerSecond: median(runs.map((b) => b.decoderStepsPerSecond)) },
    });
  }
  const one = out.find((b) => b.size === 1);
  for (const b of out) {
    b.ratioToBatch1 = one ? b.median.stepsPerSecond / one.median.stepsPerSecond : null;
    b.decoderRatioToBatch1 = one && one.median.decoderStepsPerSecond && b.median.decoderStepsPerSecond ? b.median.decoderStepsPerSecond / one.median.decoderStepsPerSecond : null;
  }
  return out;
}

/** Builds the model and codec of `cfg` from random weights on a new engine; returns the engine and load figures. */
async function buildEngine(wasm, cfg, numerics, seed, log, progress, experiments = []) {
  const watch = deviceWatch();
  watch.device = null; // the engine's own, once create has asked for it
  const t0 = now();
  const engine = await wasm.DiaEngine.create(numerics);
  for (const setting of experiments) {
    const { name, on } = experimentSetting(setting);
    engine.setExperiment(name, on);
  }
  const load = { createSeconds: (now() - t0) / 1000 };
  try {
    const diaJson = JSON.stringify(cfg.dia);
    const dacJson = JSON.stringify(cfg.dac);
    const layout = wasm.checkpointLayout(diaJson, dacJson, numerics);
    engine.beginModel(diaJson);
    engine.beginCodec(dacJson, false);
    // Without voice prompts the codec's encoder is not needed (beginCodec's withEncoder false).
    const wanted = { dia: layout.dia, dac: layout.dac.filter((t) => !t.name.startsWith('encoder.')) };
    const totalBytes = [...wanted.dia, ...wanted.dac].reduce((sum, t) => sum + 4 * elementsOf(t.shape), 0);
    let bytes = 0;
    let tensors = 0;
    let sinceDrain = 0;
    let lastPause = now();
    let lastLog = now();
    let diaDone = false;
    for (const t of randomCheckpoint(wanted, cfg.dia, seed)) {
      if (t.part === 'dac' && !diaDone) {
        engine.finishModel();
        diaDone = true;
      }
      if (t.part === 'dia') engine.putModelTensor(t.name, t.dtype, Uint32Array.from(t.shape), t.bytes);
      else engine.putCodecTensor(t.name, t.dtype, Uint32Array.from(t.shape), t.bytes);
      bytes += t.bytes.byteLength;
      sinceDrain += t.bytes.byteLength;
      tensors++;
      if (sinceDrain >= DRAIN_BYTES && watch.device) {
        await watch.device.queue.onSubmittedWorkDone();
        sinceDrain = 0;
      }
      if (now() - lastPause > 50) {
        progress({ numerics, bytes, totalBytes });
        if (now() - lastLog > 10000) {
          log(`${numerics}: ${(bytes / 1e9).toFixed(2)} of ${(totalBytes / 1e9).toFixed(2)} GB of random weights put`);
          lastLog = now();
        }
        await pause();
        lastPause = now();
      }
    }
    if (!diaDone) engine.finishModel();
    // The last finish compiles every pipeline a generation uses (Tts::prepare): its cost is reported on its own.
    const tPrepare = now();
    engine.finishCodec();
    if (watch.device) await watch.device.queue.onSubmittedWorkDone();
    Object.assign(load, {
      seconds: (now() - t0) / 1000,
      prepareSeconds: (now() - tPrepare) / 1000,
      pipelines: engine.pipelineCompiles?.() ?? null,
      tensors,
      bytes,
      stepWeightBytes: layout.stepWeightBytes,
    });
    return { engine, load, device: watch.device };
  } catch (e) {
    release(engine, watch.device);
    throw e;
  }
}

/** Frees the engine and its GPU memory at once (the next mode's engine may need all of it). */
function release(engine, device) {
  try {
    engine.free();
  } catch {}
  try {
    device?.destroy();
  } catch {}
}

/**
 * Runs the benchmark: for each numerics mode, a fresh engine with the model and codec built from random weights,
 * one warm-up generation (the first after loading: its time to first audio includes compiling the pipelines),
 * then `runs` timed generations of `steps` decoder steps. A mode that fails (too little GPU memory, say) is
 * reported with its error and the next one runs.
 *
 * @param {object} wasm the engine module (wasm-bindgen output, initialised): `DiaEngine`, `checkpointLayout`
 * @param {object} options see `benchOptions`; plus `environment` (copied into the report) and the callbacks
 *   `log(line)`, `progress({ numerics, bytes, totalBytes })` (while the weights are put, every 50 ms or so) and
 *   `onMode(modeReport)` (each mode's report as it ends)
 * @returns {Promise<object>} the report (plain JSON)
 */
export async function runBenchmark(wasm, options = {}) {
  const o = benchOptions(options);
  const log = options.log ?? (() => {});
  const cfg = BENCH_CONFIGS[o.config];
  const report = {
    benchmark: 'dia-webgpu',
    version: 1,
    startedAt: new Date().toISOString(),
    config: o.config,
    model: cfg.label,
    text: o.text,
    textBytes: new TextEncoder().encode(o.text).length,
    steps: o.steps,
    runs: o.runs,
    warmupSteps: o.warmupSteps,
    seed: o.seed,
    batches: o.batches,
    experiments: o.experiments,
    environment: { ...options.environment, adapter: await describeAdapter() },
    modes: [],
  };
  for (const numerics of o.numerics) {
    const mode = { numerics, ok: false };
    report.modes.push(mode);
    let engine = null;
    let device = null;
    try {
      log(`${numerics}: building the ${o.config} model from random weights`);
      ({ engine, load: mode.load, device } = await buildEngine(wasm, cfg, numerics, o.seed, log, options.progress ?? (() => {}), o.experiments));
      mode.adapter = engine.adapterInfo();
      log(`${numerics}: loaded ${mode.load.tensors} tensors, ${(mode.load.bytes / 1e9).toFixed(2)} GB, in ${mode.load.seconds.toFixed(1)} s`);
      mode.firstGeneration = await timeGeneration(engine, o.text, o.warmupSteps, o.seed);
      log(`${numerics}: first generation after loading (${mode.firstGeneration.steps} steps): first audio ${fmtMs(mode.firstGeneration.firstAudioMs)}, ${mode.firstGeneration.pipelinesCompiled ?? "?"} pipelines compiled during it`);
      mode.generations = [];
      for (let k = 0; k < o.runs; k++) {
        const g = await timeGeneration(engine, o.text, o.steps, o.seed + 1 + k);
        mode.generations.push(g);
        log(`${numerics}: run ${k + 1}/${o.runs}: ${g.steps} steps, ${g.stepsPerSecond.toFixed(1)} steps/s, first audio ${fmtMs(g.firstAudioMs)}, ${g.realTime.toFixed(2)}× real time`);
        if (o.timeline) log(`${numerics}: run ${k + 1} timeline (ms: rows back / chunk out): ${g.timeline.slice(0, 16).map((e) => `${e.ms.toFixed(0)}:${e.rows ?? `chunk${e.chunk}`}`).join(' ')}`);
      }
      if (o.batches.length) {
        mode.batches = await timeBatches(engine, o, (line) => log(`${numerics}: ${line}`));
        for (const b of mode.batches) log(`${numerics}: batch ${b.size}: ${b.median.stepsPerSecond.toFixed(1)} aggregate steps/s${b.ratioToBatch1 === null ? '' : `, ${b.ratioToBatch1.toFixed(2)}× batch 1 (decoder part ${b.decoderRatioToBatch1?.toFixed(2) ?? '?'}×)`}`);
      }
      const memory = engine.memory();
      mode.gpuMemory = { allocatedBytes: memory.allocated, peakBytes: memory.peak };
      const pick = (key) => median(mode.generations.map((g) => g[key]));
      const stepsPerSecond = pick('stepsPerSecond');
      mode.median = {
        stepsPerSecond,
        realTime: pick('realTime'),
        firstAudioMs: pick('firstAudioMs'),
        weightGBps: (mode.load.stepWeightBytes * stepsPerSecond) / 1e9,
      };
      mode.ok = true;
    } catch (e) {
      mode.error = String(e?.message ?? e);
      log(`${numerics}: FAILED: ${mode.error}`);
    } finally {
      if (engine) release(engine, device);
    }
    options.onMode?.(mode);
  }
  report.finishedAt = new Date().toISOString();
  return report;
}

const fmtMs = (ms) => (ms === null ? 'none (no audio)' : `${ms.toFixed(0)} ms`);

/** The report as rows of a table: one per mode, the figures a reader compares. */
export function summaryRows(report) {
  return report.modes.map((m) =>
    m.ok
      ? {
          numerics: m.numerics,
          stepsPerSecond: m.median.stepsPerSecond.toFixed(1),
          realTime: `${m.median.realTime.toFixed(2)}×`,
          firstAudio: m.median.firstAudioMs === null ? '–' : `${m.median.firstAudioMs.toFixed(0)} ms`,
          firstAudioCold: m.firstGeneration.firstAudioMs === null ? '–' : `${m.firstGeneration.firstAudioMs.toFixed(0)} ms`,
          gpuMemory: m.gpuMemory.peakBytes >= 2 ** 30 ? `${(m.gpuMemory.peakBytes / 2 ** 30).toFixed(2)} GiB` : `${(m.gpuMemory.peakBytes / 2 ** 20).toFixed(1)} MiB`,
          weightGBps: m.median.weightGBps.toPrecision(3),
          load: `${m.load.seconds.toFixed(1)} s`,
          prepare: m.load.prepareSeconds === undefined ? '–' : `${m.load.prepareSeconds.toFixed(2)} s (${m.load.pipelines ?? '?'} pipelines)`,
          batches: m.batches?.length ? m.batches.map((b) => `${b.size}: ${b.median.stepsPerSecond.toFixed(1)}${b.ratioToBatch1 === null || b.size === 1 ? '' : ` (${b.ratioToBatch1.toFixed(2)}×)`}`).join(', ') : '–',
        }
      : { numerics: m.numerics, error: m.error },
  );
}

export const SUMMARY_COLUMNS = [
  ['numerics', 'numerics'],
  ['stepsPerSecond', 'steps/s'],
  ['realTime', '× real time'],
  ['firstAudio', 'first audio (warm)'],
  ['firstAudioCold', 'first audio (first generation)'],
  ['gpuMemory', 'GPU memory (peak)'],
  ['weightGBps', 'weights GB/s'],
  ['load', 'build'],
  ['prepare', 'of which compiling pipelines'],
  ['batches', 'batches: aggregate steps/s (× batch 1)'],
];
