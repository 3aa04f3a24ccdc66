// Checkpoint loading: hub-style URLs, safetensors headers and per-tensor HTTP Range requests, the
// IndexedDB weight store, and the hand-off of each tensor to the engine as soon as it is there.
import { CancelledError, CheckpointError, DownloadError, RangeNotSupportedError } from './errors.js';
import { DTYPE_BYTES, headerLength, parseHeader } from './safetensors.js';
import { toF16Bytes } from './f16.js';
import { sha256Hex } from './store.js';

/** Adjacent small tensors are fetched together up to this many bytes (the DAC has ~200 tiny ones). */
const GROUP_BYTES = 4 << 20;
const PARALLEL = 4;
/** Bytes in flight at once (downloads wait beyond it), so the worker never holds much of a checkpoint. */
const IN_FLIGHT_BYTES = 256 << 20;
const RETRIES = 3;
/** The quantized numerics modes: their stored form comes from the engine (`storedTensors`). */
export const QUANTIZED = new Set(['q8', 'q4']);
/** Safetensors metadata key of a converted checkpoint's mode (crate/src/dia/stored.rs). */
export const CONVERTED_METADATA_KEY = 'dia_webgpu.numerics';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const WINDOWS_DEVICES = /^(CON|PRN|AUX|NUL|COM[1-9]|LPT[1-9])$/i;

/**
 * Why `name` is not a plain file name of a repository's top level (null if it is): index shards name
 * files, and a name that is a path (`../x`, `/x`, `a/b`, `C:x`) must never become a request. The same
 * rule as the native download (crate/src/bin/dia-tts/hub.rs).
 */
export function unsafeNameReason(name) {
  if (typeof name !== 'string') return 'not a string';
  if (name === '') return 'empty';
  if (name === '.' || name === '..') return 'a directory reference';
  if (/[/\\]/.test(name)) return 'it contains a path separator';
  if (name.includes(':')) return "it contains ':', a drive prefix or stream name on Windows";
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(name)) return 'it contains a control character';
  if (new TextEncoder().encode(name).length > 255) return 'longer than 255 bytes';
  if (/[. ]$/.test(name)) return 'it ends with a dot or a space, which Windows drops';
  if (WINDOWS_DEVICES.test(name.split('.')[0].trimEnd())) return 'a reserved device name on Windows';
  return null;
}

/** Throws CheckpointError unless `name` is a plain file name (see unsafeNameReason). */
function checkFileName(repo, name, what = 'file') {
  const reason = unsafeNameReason(name);
  if (reason) throw new CheckpointError(`${repo}: ${what} ${JSON.stringify(name)} is not a plain file name (${reason}); it was not requested`, { file: String(name), reason });
}

/** Files of one repository at `{baseUrl}/{repo}/resolve/{revision}/{file}`; counts its requests. */
export class HubSource {
  constructor({ baseUrl, repo, revision = 'main', signal }) {
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.repo = repo;
    this.revision = revision;
    this.signal = signal;
    this.requests = 0;
  }

  url(file) {
    return `${this.baseUrl}/${this.repo}/resolve/${encodeURIComponent(this.revision)}/${encodeURIComponent(file)}`;
  }

  /** fetch with retries on network errors, 429 and 5xx; `onRetry` undoes partial progress. */
  async #fetch(file, range, read, onRetry) {
    checkFileName(this.repo, file);
    const url = this.url(file);
    for (let attempt = 0; ; attempt++) {
      if (this.signal?.aborted) throw new CancelledError('loading was cancelled');
      let response;
      try {
        this.requests++;
        const headers = range ? { Range: `bytes=${range[0]}-${range[1] - 1}` } : {};
        // no-store: the weight store is the cache; the HTTP cache would hold a second copy.
        response = await fetch(url, { headers, cache: 'no-store', signal: this.signal });
      } catch (e) {
        if (this.signal?.aborted) throw new CancelledError('loading was cancelled');
        if (attempt < RETRIES) {
          await sleep(300 << attempt);
          continue;
        }
        throw new DownloadError(`network error fetching ${url}: ${e.message}`, { url, status: 0 });
      }
      if (!response.ok) {
        const retry = response.status === 429 || response.status >= 500;
        if (retry && attempt < RETRIES) {
          await sleep(300 << attempt);
          continue;
        }
        const hint = response.status === 404 ? ' (check the repository id and file name)' : '';
        throw new DownloadError(`HTTP ${response.status} fetching ${url}${hint}`, { url, status: response.status });
      }
      if (range && response.status !== 206) {
        throw new RangeNotSupportedError(`${url} answered ${response.status} to a Range request; the server must support HTTP ranges`, { url });
      }
      try {
        return await read(response);
      } catch (e) {
        if (e instanceof CheckpointError || this.signal?.aborted || attempt >= RETRIES) throw e;
        onRetry?.();
        await sleep(300 << attempt);
      }
    }
  }

  text(file) {
    return this.#fetch(file, null, (r) => r.text());
  }

  /** Bytes [begin, end) of `file`, read as a stream into one buffer; `onBytes(n)` as they arrive. */
  bytes(file, begin, end, onBytes = () => {}) {
    let counted = 0;
    return this.#fetch(
      file,
      [begin, end],
      async (response) => {
        const out = new Uint8Array(end - begin);
        let at = 0;
        const reader = response.body.getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          if (at + value.byteLength > out.byteLength) {
            await reader.cancel();
            throw new CheckpointError(`${this.url(file)}: more bytes than the range asked for`, { file });
          }
          out.set(value, at);
          at += value.byteLength;
          counted += value.byteLength;
          onBytes(value.byteLength);
        }
        if (at !== out.byteLength) throw new DownloadError(`${this.url(file)}: range cut short (${at} of ${out.byteLength} bytes)`);
        return out;
      },
      () => {
        onBytes(-counted);
        counted = 0;
      },
    );
  }

  async header(file) {
    const n = headerLength(await this.bytes(file, 0, 8), file);
    return parseHeader(await this.bytes(file, 8, 8 + n), file);
  }
}

/** config.json and every tensor of a repo: `model.safetensors`, or the shards of its index. */
export async function resolveCheckpoint(src) {
  const config = await src.text('config.json');
  try {
    JSON.parse(config);
  } catch (e) {
    throw new CheckpointError(`${src.url('config.json')} is not JSON (${e.message})`);
  }
  let tensors;
  let metadata;
  try {
    const header = await src.header('model.safetensors');
    tensors = [...header];
    metadata = header.metadata;
  } catch (e) {
    if (!(e instanceof DownloadError && e.details.status === 404)) throw e;
    let index;
    try {
      index = JSON.parse(await src.text('model.safetensors.index.json'));
    } catch (e2) {
      if (e2 instanceof DownloadError && e2.details.status === 404) {
        throw new CheckpointError(`${src.repo} has neither model.safetensors nor model.safetensors.index.json`);
      }
      throw e2;
    }
    const map = index?.weight_map;
    if (!map || typeof map !== 'object') throw new CheckpointError(`${src.url('model.safetensors.index.json')} has no weight_map`);
    const files = [...new Set(Object.values(map))].sort();
    // Every shard name is checked before the first shard is requested.
    for (const file of files) checkFileName(src.repo, file, 'shard');
    tensors = [];
    for (const file of files) {
      const header = await src.header(file);
      metadata ??= header.metadata;
      tensors.push(...header.filter((t) => map[t.name] === file));
    }
  }
  return { config, tensors, converted: convertedMode(metadata) };
}

/** The mode a checkpoint written by `dia-tts convert` was stored for (its safetensors metadata), else null. */
export function convertedMode(metadata) {
  const mode = metadata?.[CONVERTED_METADATA_KEY];
  return QUANTIZED.has(mode) || mode === 'f16w' || mode === 'f32' ? mode : null;
}

/** The dtype a tensor is stored and uploaded as: f16w keeps Dia matrices as f16 (exactly as the engine would). */
export function storedDtype(t, variant) {
  return variant === 'f16w' && t.shape.length === 2 && (t.dtype === 'F32' || t.dtype === 'BF16') ? 'F16' : t.dtype;
}

/** `<base>.weight` for one half of a quantized matrix as a converted checkpoint holds it, else null. */
export function quantizedBase(name) {
  const m = /^(.*)\.(qweight|scales)$/.exec(name);
  return m ? `${m[1]}.weight` : null;
}

/**
 * The stored form of checkpoint tensor `t` (its bytes `raw`) in `variant`: what the weight store keeps and the
 * engine receives, as `[{ name, dtype, shape, bytes }]`. q8 / q4: the engine's `storedTensors` (`toStored`),
 * which gives norms as F32 and every matrix (embedding tables included) in the format the mode keeps it
 * (`MatrixRole::format`), a quantized one as its two halves, exactly what the engine would write when
 * quantizing on load; a half of a converted checkpoint is kept as it is. Other variants:
 * the tensor itself, its matrices as f16 in f16w.
 */
export function storedForm(t, raw, variant, toStored) {
  if (QUANTIZED.has(variant) && !quantizedBase(t.name)) {
    return Array.from(toStored(t.name, t.dtype, Uint32Array.from(t.shape), raw, variant), (p) => ({ name: p.name, dtype: p.dtype, shape: [...p.shape], bytes: p.bytes }));
  }
  const dtype = storedDtype(t, variant);
  return [{ name: t.name, dtype, shape: t.shape, bytes: dtype === t.dtype ? raw : toF16Bytes(raw, t.dtype) }];
}

/**
 * One store record for a stored form: the parts' bytes one after the other, and their layout (kept in the
 * manifest as `t.parts`) unless the record is simply the tensor in `storedDtype` (f32, f16w, the codec, norms).
 */
export function packParts(t, parts, variant) {
  const [p] = parts;
  if (parts.length === 1 && p.name === t.name && p.dtype === storedDtype(t, variant) && String(p.shape) === String(t.shape)) return { bytes: p.bytes, layout: null };
  const layout = parts.map((p) => ({ name: p.name, dtype: p.dtype, shape: [...p.shape], length: p.bytes.byteLength }));
  const bytes = new Uint8Array(layout.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    bytes.set(p.bytes, at);
    at += p.bytes.byteLength;
  }
  return { bytes, layout };
}

/** The parts of a verified record (`t.parts` its layout; without one the record is `t` in `variant`'s dtype); null
 *  if the layout does not cover the bytes exactly. */
export function unpackParts(t, bytes, variant) {
  if (!t.parts) return [{ name: t.name, dtype: storedDtype(t, variant), shape: t.shape, bytes }];
  if (t.parts.reduce((n, p) => n + p.length, 0) !== bytes.byteLength) return null;
  let at = 0;
  return t.parts.map((p) => {
    const part = { name: p.name, dtype: p.dtype, shape: p.shape, bytes: bytes.subarray(at, at + p.length) };
    at += p.length;
    return part;
  });
}

/** The model's tensors the engine still needs: its HF names, or both halves of a quantized matrix (converted checkpoint). */
export function wantedModelTensors(tensors, missingNames) {
  const missing = new Set(missingNames);
  const needed = tensors.filter((t) => missing.has(t.name));
  for (const t of needed) missing.delete(t.name);
  const halves = new Map(); // <base>.weight → its halves in the checkpoint
  for (const t of tensors) {
    const base = quantizedBase(t.name);
    if (base && missing.has(base)) halves.set(base, [...(halves.get(base) ?? []), t]);
  }
  for (const [base, parts] of halves) {
    if (parts.length !== 2) continue; // one half alone: reported missing below
    needed.push(...parts);
    missing.delete(base);
  }
  return { needed, missing: [...missing] };
}

/** Tensors in file order merged into contiguous ranges of at most GROUP_BYTES (large ones alone). */
export function groupRanges(tensors) {
  const sorted = [...tensors].sort((a, b) => (a.file === b.file ? a.begin - b.begin : a.file < b.file ? -1 : 1));
  const groups = [];
  for (const t of sorted) {
    const g = groups.at(-1);
    if (g && g.file === t.file && g.end === t.begin && t.end - g.begin <= GROUP_BYTES) {
      g.end = t.end;
      g.tensors.push(t);
    } else {
      groups.push({ file: t.file, begin: t.begin, end: t.end, tensors: [t] });
    }
  }
  return groups;
}

/** Runs `fn` over `groups`, PARALLEL at a time and at most IN_FLIGHT_BYTES of them at once. */
async function forEachParallel(groups, fn) {
  const active = new Set();
  let inFlight = 0;
  let failure = null;
  for (const g of groups) {
    const size = g.end - g.begin;
    while (active.size > 0 && (active.size >= PARALLEL || inFlight + size > IN_FLIGHT_BYTES)) await Promise.race(active);
    if (failure) break;
    inFlight += size;
    const p = fn(g)
      .catch((e) => {
        failure ??= e;
      })
      .finally(() => {
        inFlight -= size;
        active.delete(p);
      });
    active.add(p);
  }
  await Promise.all(active);
  if (failure) throw failure;
}

/**
 * The manifest of one component ("model" or "codec") stored as `variant`: from the store, or resolved from
 * the network (config + headers; `from`: another variant's manifest of the same checkpoint instead) and saved.
 */
export async function resolveManifest({ component, src, store, variant, progress, from = null }) {
  const id = `${src.baseUrl}|${src.repo}|${src.revision}|${variant}`;
  let manifest = store ? await store.getManifest(id) : null;
  if (!manifest) {
    let resolved = from;
    if (!resolved) {
      progress.status({ status: 'resolving', component });
      resolved = await resolveCheckpoint(src);
    }
    // Header facts only: hashes and part layouts belong to the variant that stored them.
    const tensors = resolved.tensors.map(({ name, file, dtype, shape, begin, end }) => ({ name, file, dtype, shape, begin, end }));
    manifest = { id, repo: src.repo, revision: src.revision, variant, config: resolved.config, tensors, converted: resolved.converted ?? null, created: Date.now() };
    await store?.putManifest(manifest);
  }
  return manifest;
}

/**
 * First half of loading one component: its manifest (`resolveManifest`, or `manifest` when already
 * resolved); `sink.begin(config)`; the tensors the engine needs.
 * `sink` = { begin(config), wanted(tensors) → needed subset, put(name, dtype, shape, bytes), finish(),
 * stored(t, raw, variant) → the stored form (`storedForm`) }.
 */
export async function prepareComponent({ component, src, store, variant, sink, progress, manifest = null }) {
  manifest ??= await resolveManifest({ component, src, store, variant, progress });
  const id = manifest.id;
  sink.begin(manifest.config);
  const needed = sink.wanted(manifest.tensors);
  for (const t of needed) {
    if (DTYPE_BYTES[t.dtype] === undefined) throw new CheckpointError(`${t.name}: dtype ${t.dtype} is not supported (F32, F16, BF16 are, and U32 for a quantized matrix's .qweight)`);
  }
  progress.add(needed);
  return { component, src, store, variant, sink, progress, id, manifest, needed };
}

/**
 * Second half: every needed tensor from the store (hash verified; a corrupt or missing record is fetched
 * again), the rest by Range requests, converted, stored, and handed to the engine one at a time; then
 * `sink.finish()`. Returns what came from where.
 */
export async function fillComponent({ component, src, store, variant, sink, progress, id, manifest, needed }) {
  const putParts = (parts) => {
    for (const p of parts) sink.put(p.name, p.dtype, Uint32Array.from(p.shape), p.bytes);
  };
  // downloadBytes: the checkpoint bytes of these tensors (what a first load downloads); storedBytes: their
  // stored form (what the weight store holds, or would hold with cache: false).
  const stats = { cached: 0, downloaded: 0, corrupt: [], missing: [], downloadBytes: 0, storedBytes: 0 };
  for (const t of needed) stats.downloadBytes += t.end - t.begin;
  const toFetch = [];
  for (const t of needed) {
    if (!store || !t.hash) {
      toFetch.push(t);
      continue;
    }
    const bytes = await store.getTensor(id, t.name, t.hash);
    if (!bytes) {
      stats.missing.push(t.name);
      progress.status({ status: 'missing', component, tensor: t.name });
      toFetch.push(t);
      continue;
    }
    const parts = (await sha256Hex(bytes)) === t.hash ? unpackParts(t, bytes, variant) : null;
    if (!parts) {
      stats.corrupt.push(t.name);
      progress.status({ status: 'corrupt', component, tensor: t.name });
      await store.deleteTensor(id, t.name, t.hash);
      toFetch.push(t);
      continue;
    }
    putParts(parts);
    stats.storedBytes += bytes.byteLength;
    stats.cached++;
    progress.tensorDone(component, t, 'cache');
  }

  await forEachParallel(groupRanges(toFetch), async (g) => {
    const bytes = await src.bytes(g.file, g.begin, g.end, (n) => progress.bytes(component, n));
    for (const t of g.tensors) {
      const raw = bytes.subarray(t.begin - g.begin, t.end - g.begin);
      const parts = sink.stored(t, raw, variant);
      const record = packParts(t, parts, variant);
      // The record first, then its hash and layout in the manifest: a record without them is never read.
      if (store) t.hash = await store.putTensor(id, t.name, record.bytes);
      if (record.layout) t.parts = record.layout;
      else delete t.parts;
      putParts(parts);
      stats.storedBytes += record.bytes.byteLength;
      stats.downloaded++;
      progress.tensorDone(component, t, 'network');
    }
    // Saved as tensors land, so an interrupted download resumes where it stopped.
    if (store) await store.putManifest(manifest);
  });
  sink.finish();
  return stats;
}
