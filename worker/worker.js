// The Dia Web Worker: owns the WebGPU engine (wasm) and the weight store.
// Protocol (every message carries the request's `id`):
//   page → worker: { type: 'load', model, codec, baseUrl, revision, numerics, auto, autoReason, cache, encoder }
//                  (auto: numerics is what dtype 'auto' picked for the adapter; a converted checkpoint may change it)
//                  { type: 'generate', text, options, prompt?, promptTranscript? }   { type: 'cancel', target }
//                  { type: 'generateBatch', texts, options, prompt?, promptTranscript? }  (options may add batchSize)
//   worker → page: load → progress* → ready;  generate → (progress | chunk)* → done | cancelled;  error (any request);
//                  (a generation's progress: { segment, segments, rows, estimatedRows, framesOut, audioSeconds })
//                  generateBatch → (progress | text)* → done | cancelled: one text { index, pcm, steps, seconds,
//                  gpuMemory } per text in list order as its batch finishes (seconds: since its batch started);
//                  progress { batch, batches, firstItem, items, rows, maxRows, done }; done { texts, batches,
//                  batchSize, steps, samples, seconds, gpuMemory }; cancelled { texts } (how many were sent)
//                  fatal { message, code } (no id: the engine panicked ('panic') or crashed ('crash'); this
//                  worker is done and every request to it fails with an EngineError of that code)
// An error of code 'device-lost' (the GPU device was lost) also ends the engine: the page starts a new worker.
import init, { DiaEngine, storedTensors } from '../wasm/dia_webgpu.js';
import { CheckpointError, EngineError, errorToJSON, InvalidOptionError } from './errors.js';
import { fillComponent, HubSource, prepareComponent, resolveManifest, storedForm, wantedModelTensors } from './loader.js';
import { WeightStore } from './store.js';

let engine = null;
let loaded = false;
let current = null; // the running generation: { id, cancelled }
let broken = null; // the EngineError of the panic or crash that ended the engine

const post = (message, transfer = []) => self.postMessage(message, transfer);

/** Aggregated load progress over both components; byte events throttled to one per 100 ms. */
class Progress {
  constructor(id) {
    this.id = id;
    this.total = 0;
    this.loaded = 0;
    this.tensorsTotal = 0;
    this.tensorsLoaded = 0;
    this.networkBytes = 0;
    this.lastByteEvent = 0;
  }
  add(tensors) {
    this.tensorsTotal += tensors.length;
    for (const t of tensors) this.total += t.end - t.begin;
  }
  emit(event) {
    const { total, loaded, tensorsTotal, tensorsLoaded, networkBytes } = this;
    const fraction = total > 0 ? loaded / total : 0;
    post({ type: 'progress', id: this.id, progress: { ...event, loaded, total, progress: 100 * fraction, tensorsLoaded, tensorsTotal, networkBytes } });
  }
  status(event) {
    this.emit(event);
  }
  bytes(component, n) {
    this.loaded += n;
    this.networkBytes += n;
    const now = performance.now();
    if (now - this.lastByteEvent >= 100) {
      this.lastByteEvent = now;
      this.emit({ status: 'downloading', component });
    }
  }
  tensorDone(component, t, source) {
    this.tensorsLoaded++;
    if (source === 'cache') this.loaded += t.end - t.begin;
    this.emit({ status: source === 'cache' ? 'cached' : 'downloaded', component, tensor: t.name });
  }
}

function modelSink() {
  return {
    begin: (config) => engine.beginModel(config),
    wanted: (tensors) => {
      const { needed, missing: names } = wantedModelTensors(tensors, engine.modelMissing());
      if (names.length > 0) {
        throw new CheckpointError(`the checkpoint lacks ${names.length} tensor(s) the model needs, e.g. ${names[0]}`, { missing: names });
      }
      return needed;
    },
    put: (name, dtype, shape, bytes) => engine.putModelTensor(name, dtype, shape, bytes),
    stored: (t, raw, variant) => storedForm(t, raw, variant, storedTensors),
    finish: () => engine.finishModel(),
  };
}

function codecSink(withEncoder) {
  return {
    begin: (config) => engine.beginCodec(config, withEncoder),
    // The encoder only serves voice prompts: without it, its weights are not even downloaded.
    wanted: (tensors) => tensors.filter((t) => withEncoder || !t.name.startsWith('encoder.')),
    put: (name, dtype, shape, bytes) => engine.putCodecTensor(name, dtype, shape, bytes),
    stored: (t, raw) => storedForm(t, raw, 'raw'),
    finish: () => engine.finishCodec(),
  };
}

/** The modes by the GPU memory they take, smallest last (as web/src/dtype.js DTYPES), to choose between a converted
 *  checkpoint's mode and the one 'auto' picked. */
const BY_MEMORY = ['f32', 'f16w', 'q8', 'q4'];

async function load(msg) {
  if (engine) throw new InvalidOptionError('this worker already holds a model; start another DiaTTS to load a second one');
  const started = performance.now();
  await init();
  const store = msg.cache ? await WeightStore.open() : null;
  const progress = new Progress(msg.id);
  const source = (repo) => new HubSource({ baseUrl: msg.baseUrl, repo, revision: msg.revision });
  const modelSrc = source(msg.model);
  const codecSrc = source(msg.codec);
  try {
    let numerics = msg.numerics;
    let reason = msg.auto ? `auto: ${msg.autoReason}` : 'requested';
    let modelManifest = await resolveManifest({ component: 'model', src: modelSrc, store, variant: numerics, progress });
    // 'auto' and a checkpoint converted for a mode that takes no more memory than the adapter's pick: load it in its
    // own mode, as it is (nothing rounded twice).
    const own = modelManifest.converted;
    if (msg.auto && own && own !== numerics && BY_MEMORY.indexOf(own) >= BY_MEMORY.indexOf(numerics)) {
      modelManifest = await resolveManifest({ component: 'model', src: modelSrc, store, variant: own, progress, from: modelManifest });
      reason = `auto: a checkpoint converted for ${own} (the adapter's pick: ${numerics}, ${msg.autoReason})`;
      numerics = own;
    }
    engine = await DiaEngine.create(numerics);
    // Both manifests first, so the progress total is known from the start.
    const model = await prepareComponent({ component: 'model', src: modelSrc, store, variant: numerics, sink: modelSink(), progress, manifest: modelManifest });
    const codec = await prepareComponent({ component: 'codec', src: codecSrc, store, variant: 'raw', sink: codecSink(msg.encoder), progress });
    const modelStats = await fillComponent(model);
    const codecStats = await fillComponent(codec);
    loaded = true;
    const requests = modelSrc.requests + codecSrc.requests;
    post({
      type: 'ready',
      id: msg.id,
      adapterInfo: engine.adapterInfo(),
      numerics,
      numericsReason: reason,
      converted: modelManifest.converted ?? null,
      fromCache: requests === 0,
      requests,
      networkBytes: progress.networkBytes,
      downloadBytes: modelStats.downloadBytes + codecStats.downloadBytes,
      storedBytes: modelStats.storedBytes + codecStats.storedBytes,
      gpuMemory: engine.memory(),
      tensors: progress.tensorsTotal,
      model: modelStats,
      codec: codecStats,
      seconds: (performance.now() - started) / 1000,
    });
  } finally {
    store?.close();
  }
}

async function generate(msg) {
  if (!loaded) throw new EngineError('no model loaded');
  const job = { id: msg.id, cancelled: false, chunks: 0 };
  current = job;
  try {
    const onChunk = (pcm) => {
      if (job.cancelled) return;
      // A copy of our own, so transferring it can never detach memory the engine still uses.
      const chunk = new Float32Array(pcm);
      job.chunks++;
      post({ type: 'chunk', id: job.id, pcm: chunk }, [chunk.buffer]);
    };
    const onProgress = (progress) => {
      if (!job.cancelled) post({ type: 'progress', id: job.id, progress });
    };
    const result = await engine.generate(msg.text, msg.options ?? {}, msg.prompt ?? undefined, onChunk, msg.promptTranscript ?? undefined, onProgress);
    const { samples, steps, seconds, segments } = result;
    post({ type: job.cancelled ? 'cancelled' : 'done', id: job.id, samples, steps, seconds, segments, chunks: job.chunks, gpuMemory: engine.memory() });
  } catch (e) {
    if (!job.cancelled) throw e;
    post({ type: 'cancelled', id: job.id, chunks: job.chunks });
  } finally {
    if (current === job) current = null;
  }
}

async function generateBatch(msg) {
  if (!loaded) throw new EngineError('no model loaded');
  const job = { id: msg.id, cancelled: false, texts: 0 };
  current = job;
  let batchStarted = performance.now();
  try {
    const onText = (index, pcm, steps) => {
      if (job.cancelled) return;
      const audio = new Float32Array(pcm); // our own copy, transferred
      job.texts++;
      const seconds = (performance.now() - batchStarted) / 1000;
      post({ type: 'text', id: job.id, index, pcm: audio, steps, seconds, gpuMemory: engine.memory() }, [audio.buffer]);
    };
    const onProgress = (progress) => {
      if (progress.rows === 0) batchStarted = performance.now();
      if (!job.cancelled) post({ type: 'progress', id: job.id, progress });
    };
    const result = await engine.generateBatch(msg.texts, msg.options ?? {}, msg.prompt ?? undefined, onText, msg.promptTranscript ?? undefined, onProgress);
    if (job.cancelled) post({ type: 'cancelled', id: job.id, texts: job.texts });
    else post({ type: 'done', id: job.id, ...result, gpuMemory: engine.memory() });
  } catch (e) {
    if (!job.cancelled) throw e;
    post({ type: 'cancelled', id: job.id, texts: job.texts });
  } finally {
    if (current === job) current = null;
  }
}

function cancel(msg) {
  if (current && (msg.target === undefined || current.id === msg.target)) {
    current.cancelled = true;
    engine.cancel();
  }
}

// A Rust panic traps the wasm instance, which is unusable from then on (wasm-bindgen marks it so). Inside a
// generation it surfaces outside any request, as an uncaught error of the task that polled the future; in a
// synchronous call, as a WebAssembly.RuntimeError thrown there. Either way it is reported once as 'fatal' with
// the panic's text, which console_error_panic_hook logs just before.
let lastPanic = null;
const consoleError = console.error.bind(console);
console.error = (...args) => {
  const text = args.map(String).join(' ');
  if (text.includes('panicked at')) lastPanic = text.split('\n\nStack:')[0].trim();
  consoleError(...args);
};

function fatal(error) {
  if (broken) return;
  broken = lastPanic || error instanceof WebAssembly.RuntimeError
    ? new EngineError(`the engine panicked: ${lastPanic ?? error.message}`, { code: 'panic' })
    : new EngineError(`the engine crashed: ${error?.message ?? error}`, { code: 'crash' });
  post({ type: 'fatal', message: broken.message, code: broken.code });
}
self.addEventListener('error', (event) => {
  event.preventDefault();
  fatal(event.error ?? new Error(event.message));
});
self.addEventListener('unhandledrejection', (event) => {
  if (!(event.reason instanceof WebAssembly.RuntimeError)) return;
  event.preventDefault();
  fatal(event.reason);
});

const handlers = { load, generate, generateBatch };

self.onmessage = async ({ data: msg }) => {
  if (msg.type === 'cancel') return cancel(msg);
  const handler = handlers[msg.type];
  try {
    if (broken) throw broken;
    if (!handler) throw new InvalidOptionError(`unknown request ${msg.type}`);
    await handler(msg);
  } catch (e) {
    if (e instanceof WebAssembly.RuntimeError) fatal(e);
    post({ type: 'error', id: msg.id, error: errorToJSON(broken ?? e) });
  }
};
