// dia-webgpu: Dia 1.6B text-to-speech + the DAC codec on WebGPU, in a Web Worker.
import { capabilities, requireWebGPU } from './features.js';
import { chooseDtype, DTYPES } from './dtype.js';
import { decodeAudio, toMono44k } from './audio.js';
import { canShareMemory, PcmPlayer, SAMPLE_RATE } from './player.js';
import { toWav } from './wav.js';
import { CancelledError, EngineError, errorFromJSON, InvalidOptionError } from './worker/errors.js';
export {
  CacheEvictedError,
  CancelledError,
  CheckpointError,
  DiaError,
  DownloadError,
  EngineError,
  InvalidOptionError,
  QuotaExceededError,
  RangeNotSupportedError,
  StorageError,
  WebGPUUnavailableError,
} from './worker/errors.js';
import { deleteWeightDatabase, WeightStore } from './worker/store.js';

export { capabilities, chooseDtype, decodeAudio, PcmPlayer, SAMPLE_RATE, toWav };

const DEFAULTS = {
  model: 'nari-labs/Dia-1.6B-0626',
  codec: 'descript/dac_44khz',
  baseUrl: 'https://huggingface.co',
  revision: 'main',
  dtype: 'auto',
  cache: true,
  encoder: true,
};

const DTYPE_OPTIONS = ['auto', ...DTYPES];
// testHook is test-only (the package's own tests inject a panic or a device loss with it).
const ENGINE_OPTIONS = ['temperature', 'topP', 'cfgScale', 'cfgFilterTopK', 'seed', 'maxNewTokens', 'testHook'];
// EngineError codes after which the worker's engine is unusable.
const ENGINE_ENDING_CODES = new Set(['panic', 'crash', 'device-lost']);

// The largest batch the engine takes (crate/src/dia/batch_plan.rs MAX_BATCH).
const MAX_BATCH_SIZE = 64;

/** A list of texts for `generate([...])`, checked before anything is queued: an InvalidOptionError naming the first
 *  thing wrong (whether a text is blank or too long the engine tells, with the same codes and the text's index). */
function checkList(texts, options) {
  if (texts.length === 0) throw new InvalidOptionError('the list of texts is empty', { code: 'empty-list' });
  const bad = texts.findIndex((t) => typeof t !== 'string');
  if (bad >= 0) throw new InvalidOptionError(`text ${bad} of the list is not a string (${typeof texts[bad]})`, { code: 'not-a-string', index: bad });
  const { batchSize, onText, onProgress } = options;
  if (batchSize !== undefined && !(Number.isInteger(batchSize) && batchSize >= 1 && batchSize <= MAX_BATCH_SIZE)) {
    throw new InvalidOptionError(`batchSize must be a whole number from 1 to ${MAX_BATCH_SIZE}, not ${JSON.stringify(batchSize) ?? String(batchSize)}`);
  }
  if (onText !== undefined && typeof onText !== 'function') throw new InvalidOptionError('onText must be a function');
  if (onProgress !== undefined && typeof onProgress !== 'function') throw new InvalidOptionError('onProgress must be a function');
}

function engineOptions(options) {
  const out = {};
  for (const key of ENGINE_OPTIONS) if (options[key] !== undefined) out[key] = options[key];
  return out;
}

async function promptSamples(prompt) {
  if (prompt === undefined || prompt === null) return undefined;
  if (prompt instanceof Float32Array) return prompt.slice();
  if (typeof AudioBuffer !== 'undefined' && prompt instanceof AudioBuffer) return toMono44k(prompt);
  if (prompt instanceof Blob || prompt instanceof ArrayBuffer) return decodeAudio(prompt);
  throw new InvalidOptionError('prompt must be a Float32Array (mono, 44.1 kHz), an AudioBuffer, a Blob or an ArrayBuffer, or { audio, transcript } with one of those');
}

/** `options.prompt` as { samples, transcript }: a bare audio value, or { audio, transcript } (transcript optional). */
async function voicePrompt(prompt) {
  const isVoice = prompt !== null && typeof prompt === 'object' && 'audio' in prompt && !(prompt instanceof Float32Array);
  if (!isVoice) return { samples: await promptSamples(prompt), transcript: undefined };
  const { audio, transcript } = prompt;
  if (transcript !== undefined && typeof transcript !== 'string') throw new InvalidOptionError('prompt.transcript must be a string (what the voice prompt says, with its speaker tags)');
  if (audio === undefined || audio === null) throw new InvalidOptionError('prompt.audio is missing');
  return { samples: await promptSamples(audio), transcript };
}

function concat(chunks) {
  const out = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

export class DiaTTS {
  /**
   * Checks WebGPU, starts the worker and loads the model and codec (from the weight store when they are
   * there, else from `{baseUrl}/{repo}/resolve/{revision}/…` by HTTP ranges, storing them as they come).
   */
  static async load(options = {}) {
    const o = { ...DEFAULTS, ...options };
    if (!DTYPE_OPTIONS.includes(o.dtype)) throw new InvalidOptionError(`dtype must be "auto" (default), "f16w", "q8", "q4" or "f32", not ${JSON.stringify(o.dtype)}`);
    const auto = o.dtype === 'auto';
    const caps = await requireWebGPU(o.dtype);
    const numerics = auto ? caps.autoDtype.dtype : o.dtype;
    if (o.cache) navigator.storage?.persist?.().catch(() => {}); // ask the browser not to evict the weights
    const spawn = () => new Worker(o.workerUrl ?? new URL('./worker/worker.js', import.meta.url), { type: 'module', name: 'dia-webgpu' });
    const loadMessage = {
      type: 'load',
      model: o.model,
      codec: o.codec,
      baseUrl: o.baseUrl,
      revision: o.revision,
      numerics,
      auto,
      autoReason: auto ? caps.autoDtype.reason : undefined,
      cache: o.cache,
      encoder: o.encoder,
    };
    const tts = new DiaTTS(spawn(), caps, { spawn, loadMessage });
    try {
      tts.info = await tts.#send(loadMessage, { onProgress: o.onProgress });
      return tts;
    } catch (e) {
      tts.#worker.terminate();
      throw e;
    }
  }

  /** Removes stored weights: of one repository (`{ model: 'org/name' }`), or all of them. */
  static async clearCache({ model } = {}) {
    if (model === undefined) return deleteWeightDatabase();
    const store = await WeightStore.open();
    try {
      await store.clear(model);
    } finally {
      store.close();
    }
  }

  static capabilities() {
    return capabilities();
  }

  #worker;
  #ids = 0;
  #requests = new Map(); // id → { resolve, reject, onProgress, onChunk }
  #queue = Promise.resolve(); // generations run one at a time
  #jobs = new Set();
  #playbacks = new Set();
  #players = new Map(); // AudioContext → Promise<PcmPlayer>
  #context = null;
  #failure = null;
  // After a panic or a lost GPU device the engine is gone: `#lost` is the EngineError that ended it, and the
  // next generation first starts a new worker (`#spawn`) and loads it again (`#loadMessage`, from the store).
  #spawn = null;
  #loadMessage = null;
  #lost = null;
  #restarting = null;

  constructor(worker, capabilities, { spawn = null, loadMessage = null } = {}) {
    this.capabilities = capabilities;
    this.samplingRate = SAMPLE_RATE;
    this.info = null;
    this.#spawn = spawn;
    this.#loadMessage = loadMessage;
    this.#attach(worker);
  }

  #attach(worker) {
    this.#worker = worker;
    worker.onmessage = ({ data }) => this.#onMessage(data);
    worker.onerror = (event) => {
      event.preventDefault?.();
      this.#fail(new EngineError(`the Dia worker failed: ${event.message || 'could not start (is the package served with its worker/ and wasm/ folders?)'}`));
    };
    worker.onmessageerror = () => this.#fail(new EngineError('a message from the Dia worker could not be read'));
  }

  /** The AudioContext that `speak` created (null until then, or when one was always passed). */
  get audioContext() {
    return this.#context;
  }

  /** The underlying Worker (its messages follow the protocol documented in worker/worker.js). */
  get worker() {
    return this.#worker;
  }

  #fail(error) {
    this.#failure = error;
    for (const r of this.#requests.values()) r.reject(error);
    this.#requests.clear();
  }

  /** The engine ended (`error`: an EngineError of code 'panic', 'crash' or 'device-lost'): its worker is
   *  stopped, its requests fail with `error`, and the next generation starts a new engine. */
  #engineLost(error) {
    this.#lost = error;
    this.#worker.terminate();
    for (const r of this.#requests.values()) r.reject(error);
    this.#requests.clear();
  }

  /** A working engine: after an engine was lost, a new worker loaded as the first one was (from the weight
   *  store when it has the weights). If that fails, the error is thrown and the next call tries again. */
  #ready() {
    if (!this.#lost || this.#failure) return Promise.resolve();
    if (!this.#spawn) return Promise.reject(this.#lost);
    this.#restarting ??= (async () => {
      this.#attach(this.#spawn());
      this.#lost = null;
      try {
        this.info = await this.#send(this.#loadMessage);
      } catch (e) {
        this.#engineLost(e);
        throw e;
      }
    })().finally(() => (this.#restarting = null));
    return this.#restarting;
  }

  #send(message, handlers = {}, transfer = []) {
    if (this.#failure) return Promise.reject(this.#failure);
    const id = ++this.#ids;
    handlers.onSent?.(id);
    return new Promise((resolve, reject) => {
      this.#requests.set(id, { ...handlers, resolve, reject });
      this.#worker.postMessage({ ...message, id }, transfer);
    });
  }

  #onMessage(m) {
    if (m.type === 'fatal') return this.#engineLost(new EngineError(m.message, { code: m.code }));
    const r = this.#requests.get(m.id);
    if (!r) return;
    switch (m.type) {
      case 'progress':
        r.onProgress?.(m.progress);
        return;
      case 'chunk':
        r.onChunk?.(m.pcm);
        return;
      case 'text':
        r.onText?.(m);
        return;
      case 'ready':
      case 'done':
        this.#requests.delete(m.id);
        r.resolve(m);
        return;
      case 'cancelled':
        this.#requests.delete(m.id);
        r.reject(new CancelledError('the generation was cancelled', m.texts === undefined ? { chunks: m.chunks, steps: m.steps } : { texts: m.texts }));
        return;
      case 'error': {
        this.#requests.delete(m.id);
        const error = errorFromJSON(m.error);
        r.reject(error);
        if (error instanceof EngineError && ENGINE_ENDING_CODES.has(error.code)) this.#engineLost(error);
      }
    }
  }

  /**
   * Streams the speech as it is generated: an async iterator of 44.1 kHz mono Float32Array chunks, with
   * `result` (a promise of { samples, steps, seconds, segments, gpuMemory }) and `cancel()`. Breaking out of a
   * `for await` loop cancels the generation. `text` may be a script of any length (up to 256 KiB): a text longer
   * than one segment is spoken segment by segment as one continuous stream, `options.onProgress` hearing
   * { segment, segments, rows, estimatedRows, framesOut, audioSeconds }. `options.prompt`: a voice, as audio
   * (whose transcript then begins `text`) or { audio, transcript } (needed for a text of several segments).
   */
  stream(text, options = {}) {
    const job = { id: null, stopped: false };
    const chunks = [];
    let wake = null;
    let finished = false;
    let failure = null;
    const notify = () => {
      wake?.();
      wake = null;
    };
    const run = async () => {
      if (typeof text !== 'string') throw new InvalidOptionError('text must be a string (generate also takes an array of strings, each spoken as its own audio)');
      if (options.onProgress !== undefined && typeof options.onProgress !== 'function') throw new InvalidOptionError('onProgress must be a function');
      const { samples: prompt, transcript: promptTranscript } = await voicePrompt(options.prompt);
      await this.#ready();
      if (job.stopped) throw new CancelledError('the generation was cancelled before it started');
      return this.#send(
        { type: 'generate', text, options: engineOptions(options), prompt, promptTranscript },
        {
          onSent: (id) => (job.id = id),
          onChunk: (pcm) => {
            if (job.stopped) return;
            chunks.push(pcm);
            notify();
          },
          onProgress: (progress) => {
            if (!job.stopped) options.onProgress?.(progress);
          },
        },
      );
    };
    const started = this.#queue.then(() => (job.stopped ? Promise.reject(new CancelledError('the generation was cancelled before it started')) : run()));
    this.#queue = started.catch(() => {});
    job.done = started.then(
      ({ samples, steps, seconds, segments, gpuMemory }) => {
        // A generation that ended while its cancel was on the way still counts as cancelled: its last
        // chunks were dropped.
        if (job.stopped) throw new CancelledError('the generation was cancelled');
        return { samples, steps, seconds, segments, gpuMemory };
      },
    );
    job.done.then(
      () => (finished = true),
      (e) => {
        finished = true;
        failure = e;
      },
    ).then(notify);
    this.#jobs.add(job);
    job.done.catch(() => {}).finally(() => this.#jobs.delete(job));
    options.signal?.addEventListener('abort', () => this.#cancelJob(job), { once: true });

    const tts = this;
    return {
      result: job.done,
      cancel: () => tts.#cancelJob(job),
      async next() {
        for (;;) {
          if (chunks.length) return { value: chunks.shift(), done: false };
          if (failure) throw failure;
          if (finished) return { value: undefined, done: true };
          await new Promise((resolve) => (wake = resolve));
        }
      },
      async return() {
        if (!finished) await tts.#cancelJob(job);
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  /** Generates the whole utterance (a script of any length, as `stream`): { audio: Float32Array, samplingRate: 44100,
   *  samples, steps, seconds, segments, gpuMemory }. Given an array of texts, each is spoken as its own audio (see
   *  `#generateList`) and the result is an array of those objects, one per text. */
  async generate(text, options = {}) {
    if (Array.isArray(text)) return this.#generateList(text, options);
    const chunks = [];
    const stream = this.stream(text, options);
    for await (const chunk of stream) {
      chunks.push(chunk);
      options.onChunk?.(chunk);
    }
    return { audio: concat(chunks), samplingRate: SAMPLE_RATE, ...(await stream.result) };
  }

  /**
   * Generates and plays through an AudioWorklet as the audio arrives; resolves once it has played:
   * { audio, samplingRate, samples, steps, seconds, played (samples the worklet consumed), underruns }.
   * `options.audioContext`: play there (else a context of the package's own); `options.onPosition`,
   * `options.onChunk` as in generate.
   */
  async speak(text, options = {}) {
    const context = options.audioContext ?? (this.#context ??= new AudioContext({ latencyHint: 'playback' }));
    if (context.state === 'suspended') await context.resume();
    if (!this.#players.has(context)) this.#players.set(context, PcmPlayer.create(context, { shared: options.sharedMemory ?? canShareMemory() }));
    const player = await this.#players.get(context);
    const playback = player.start({ onPosition: options.onPosition });
    this.#playbacks.add(playback);
    try {
      const chunks = [];
      const stream = this.stream(text, options);
      try {
        for await (const chunk of stream) {
          chunks.push(chunk);
          playback.push(chunk);
          options.onChunk?.(chunk);
        }
      } catch (e) {
        playback.stop();
        throw e;
      }
      playback.end();
      const played = await playback.finished;
      if (played.stopped) throw new CancelledError('playback was stopped');
      const stats = await stream.result;
      return { audio: concat(chunks), samplingRate: SAMPLE_RATE, ...stats, played: played.consumed, underruns: played.underruns, sharedMemory: player.shared };
    } finally {
      this.#playbacks.delete(playback);
    }
  }

  /**
   * Speaks every text of `texts` as its own audio, several texts at a time (one decoder step advances a whole batch),
   * and resolves to one result per text, in list order: { audio, samplingRate, samples, steps, seconds (its batch's
   * time until this text was ready), segments: 1, gpuMemory, index }. `options.onText(index, result)` hears each text
   * as its batch finishes; `options.onProgress` hears { batch, batches, firstItem, items, rows, maxRows, done };
   * `options.batchSize` (1 to 64) caps the texts per batch (default: as many as the device binds, up to 8). Each text
   * must fit one generation (1024 bytes); `options.prompt` { audio, transcript } puts the transcript in front of every
   * text. Cancelled (`cancel()`, `signal`, or `onText` throwing), it rejects; texts handed to `onText` stay handed out.
   */
  #generateList(texts, options) {
    checkList(texts, options);
    const list = [...texts];
    const results = new Array(list.length);
    const job = { id: null, stopped: false, failure: null };
    const run = async () => {
      const { samples: prompt, transcript: promptTranscript } = await voicePrompt(options.prompt);
      await this.#ready();
      if (job.stopped) throw new CancelledError('the generation was cancelled before it started');
      const batchSize = options.batchSize;
      return this.#send(
        { type: 'generateBatch', texts: list, options: { ...engineOptions(options), ...(batchSize === undefined ? {} : { batchSize }) }, prompt, promptTranscript },
        {
          onSent: (id) => (job.id = id),
          onText: ({ index, pcm, steps, seconds, gpuMemory }) => {
            if (job.stopped) return;
            const result = { audio: pcm, samplingRate: SAMPLE_RATE, samples: pcm.length, steps, seconds, segments: 1, gpuMemory, index };
            results[index] = result;
            try {
              options.onText?.(index, result);
            } catch (e) {
              // As an exception in generate's onChunk: the generation stops and the call rejects with it.
              job.failure = e;
              this.#cancelJob(job);
            }
          },
          onProgress: (progress) => {
            if (!job.stopped) options.onProgress?.(progress);
          },
        },
      );
    };
    const started = this.#queue.then(() => (job.stopped ? Promise.reject(new CancelledError('the generation was cancelled before it started')) : run()));
    this.#queue = started.catch(() => {});
    job.done = started.then(
      () => {
        if (job.failure) throw job.failure;
        if (job.stopped) throw new CancelledError('the generation was cancelled', { texts: results.filter(Boolean).length });
        const missing = results.findIndex((r) => r === undefined);
        if (missing >= 0 || results.length !== list.length) throw new EngineError(`the engine finished without text ${missing} of the list`);
        return results;
      },
      (e) => {
        throw job.failure ?? e;
      },
    );
    this.#jobs.add(job);
    job.done.catch(() => {}).finally(() => this.#jobs.delete(job));
    if (options.signal?.aborted) this.#cancelJob(job);
    else options.signal?.addEventListener('abort', () => this.#cancelJob(job), { once: true });
    return job.done;
  }

  #cancelJob(job) {
    if (!job.stopped) {
      job.stopped = true;
      if (job.id !== null) this.#worker.postMessage({ type: 'cancel', target: job.id });
    }
    return job.done.then(
      () => {},
      () => {},
    );
  }

  /** Stops every running or queued generation and any playback; resolves once the worker has stopped. */
  async cancel() {
    for (const p of this.#playbacks) p.stop();
    await Promise.all([...this.#jobs].map((job) => this.#cancelJob(job)));
  }

  /** Cancels, ends the worker (freeing the GPU memory) and closes the package's own AudioContext. */
  async dispose() {
    await this.cancel();
    this.#worker.terminate();
    this.#fail(new EngineError('this DiaTTS was disposed'));
    for (const p of this.#players.values()) p.then((player) => player.close(), () => {});
    await this.#context?.close();
  }
}
