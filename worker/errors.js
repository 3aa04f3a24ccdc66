// Typed errors shared by the worker and the page. They cross postMessage as { name, message, details }
// and are rebuilt on the other side by `errorFromJSON`, so `instanceof` works for the package's users.

export class DiaError extends Error {
  constructor(message, details = {}) {
    super(message);
    this.name = new.target.name;
    this.details = details;
  }
  /** What went wrong, where the package tells cases of one class apart (`details.code`), else undefined. */
  get code() {
    return this.details.code;
  }
  toJSON() {
    return { name: this.name, message: this.message, details: this.details };
  }
}

/** No WebGPU: `navigator.gpu` missing, not a secure context, or no adapter offered. */
export class WebGPUUnavailableError extends DiaError {}
/** An HTTP request for a model file failed (status in `details.status`, 0 for a network error). */
export class DownloadError extends DiaError {}
/** The server ignored a Range request (answered 200 with the whole file). */
export class RangeNotSupportedError extends DiaError {}
/** A checkpoint that cannot be used: bad safetensors header, unsupported dtype, tensors missing. */
export class CheckpointError extends DiaError {}
/** The browser refused to store more weights (`details.usage`, `details.quota` in bytes when known). */
export class QuotaExceededError extends DiaError {}
/** The weight store disappeared while in use (site data cleared, storage evicted under pressure). */
export class CacheEvictedError extends DiaError {}
/** Any other IndexedDB failure. */
export class StorageError extends DiaError {}
/**
 * The WebAssembly engine reported an error (GPU limits, bad tensor, generation failure). `code` (also
 * `details.code`) marks the failures that end the engine: 'device-lost' (the GPU device was lost), 'panic'
 * (a Rust panic), 'crash' (any other uncaught error in the worker). The DiaTTS then starts a new engine for its
 * next request, from the weight store.
 */
export class EngineError extends DiaError {}
/** A generation was stopped by `cancel()` or an AbortSignal. */
export class CancelledError extends DiaError {}
/**
 * An argument that the API cannot use. The engine's refusals of a text carry a `code` (also `details.code`):
 * 'script-too-long' (over the splitter's maximum; `details.bytes`, `details.limit`), 'nothing-to-speak' (empty,
 * whitespace or speaker tags only), 'voice-needs-transcript' (a voice prompt without `transcript` on a text of
 * more than one segment; `details.segments`). For a list of texts (`generate([...])`): 'empty-list', and
 * 'nothing-to-speak', 'not-a-string' or 'text-too-long' (over what one generation reads; `details.bytes`,
 * `details.limit`) with `details.index`, the text's place in the list; 'batch-too-large' (`details.size`,
 * `details.max`: the device cannot bind a batch that large).
 */
export class InvalidOptionError extends DiaError {}

const classes = {
  DiaError,
  WebGPUUnavailableError,
  DownloadError,
  RangeNotSupportedError,
  CheckpointError,
  QuotaExceededError,
  CacheEvictedError,
  StorageError,
  EngineError,
  CancelledError,
  InvalidOptionError,
};

/** The engine's error codes for a text it refuses (the request is at fault, the engine is fine), with the numbers
 *  each one carries. */
const INVALID_INPUT = {
  'script-too-long': ['bytes', 'limit'],
  'nothing-to-speak': ['index'],
  'voice-needs-transcript': ['segments'],
  'empty-list': [],
  'text-too-long': ['index', 'bytes', 'limit'],
  'batch-too-large': ['size', 'max'],
};

/** Serialisable form of any thrown value; foreign errors become EngineError (keeping the engine's `code`), or
 *  InvalidOptionError for a text the engine refuses (`INVALID_INPUT`). */
export function errorToJSON(e) {
  if (e instanceof DiaError) return e.toJSON();
  const message = e instanceof Error ? e.message : String(e);
  const code = typeof e?.code === 'string' ? e.code : undefined;
  if (Object.hasOwn(INVALID_INPUT, code)) {
    const details = { code };
    for (const key of INVALID_INPUT[code]) if (typeof e[key] === 'number') details[key] = e[key];
    return { name: 'InvalidOptionError', message, details };
  }
  return { name: 'EngineError', message, details: code ? { code } : {} };
}

export function errorFromJSON({ name, message, details }) {
  const Class = classes[name] ?? DiaError;
  return new Class(message, details ?? {});
}
