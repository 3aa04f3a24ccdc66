// The weight store: one IndexedDB record per tensor, keyed by [model id, tensor name, SHA-256 of the
// stored bytes], plus one manifest per model id (config, tensor list, byte ranges, hashes) so that a
// second visit needs no request at all. A record whose bytes no longer hash to its key is corrupt.
import { CacheEvictedError, QuotaExceededError, StorageError } from './errors.js';

export const DB_NAME = 'dia-webgpu';
const DB_VERSION = 1;
const MANIFESTS = 'manifests';
const TENSORS = 'tensors';

export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  let hex = '';
  for (const b of digest) hex += b.toString(16).padStart(2, '0');
  return hex;
}

function done(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

/** Every record key of one model id: [id] < [id, name, hash] < [id, []] (arrays sort after strings). */
function modelRange(id) {
  return IDBKeyRange.bound([id], [id, []]);
}

async function storageEstimate() {
  try {
    return (await navigator.storage?.estimate?.()) ?? {};
  } catch {
    return {};
  }
}

export class WeightStore {
  static async open() {
    if (typeof indexedDB === 'undefined') throw new StorageError('IndexedDB is not available in this context');
    const request = indexedDB.open(DB_NAME, DB_VERSION);
    request.onupgradeneeded = () => {
      const db = request.result;
      db.createObjectStore(MANIFESTS, { keyPath: 'id' });
      db.createObjectStore(TENSORS, { keyPath: ['model', 'name', 'hash'] });
    };
    let db;
    try {
      db = await done(request);
    } catch (e) {
      throw await WeightStore.#mapError(e, 'opening the weight store');
    }
    return new WeightStore(db);
  }

  #db;
  #lost = null;

  constructor(db) {
    this.#db = db;
    // Another context deletes the database (clearCache): let it, and refuse further use.
    db.onversionchange = () => {
      db.close();
      this.#lost ??= 'it was deleted (clearCache)';
    };
    // Closed by the browser: site data cleared or storage evicted.
    db.onclose = () => {
      this.#lost ??= 'the browser closed it (site data cleared or storage evicted)';
    };
  }

  close() {
    this.#lost ??= 'closed';
    this.#db.close();
  }

  static async #mapError(e, what) {
    const name = e?.name ?? '';
    const message = e?.message ?? String(e);
    if (name === 'QuotaExceededError') {
      const { usage, quota } = await storageEstimate();
      const mb = (x) => (x === undefined ? '?' : (x / 1e6).toFixed(1));
      return new QuotaExceededError(
        `Not enough storage for the model weights while ${what} (the browser reports ${mb(usage)} MB used of ${mb(quota)} MB). ` +
          'Free disk space, clear other site data, or load with { cache: false }.',
        { usage, quota },
      );
    }
    if (name === 'InvalidStateError' || (name === 'UnknownError' && /closed|backing store/i.test(message))) {
      return new CacheEvictedError(`The weight store disappeared while ${what}: ${message}`);
    }
    return new StorageError(`IndexedDB failed while ${what}: ${name} ${message}`.trim());
  }

  /** Runs `body(objectStore)` in one transaction; resolves with body's request result after commit. */
  async #run(storeName, mode, what, body) {
    if (this.#lost) throw new CacheEvictedError(`The weight store was lost while ${what}: ${this.#lost}`);
    try {
      const tx = this.#db.transaction(storeName, mode);
      const request = body(tx.objectStore(storeName));
      await new Promise((resolve, reject) => {
        tx.oncomplete = resolve;
        tx.onerror = () => reject(tx.error);
        tx.onabort = () => reject(tx.error ?? new DOMException('transaction aborted', 'AbortError'));
      });
      return request?.result;
    } catch (e) {
      if (this.#lost) throw new CacheEvictedError(`The weight store was lost while ${what}: ${this.#lost}`);
      throw await WeightStore.#mapError(e, what);
    }
  }

  getManifest(id) {
    return this.#run(MANIFESTS, 'readonly', `reading the manifest of ${id}`, (s) => s.get(id));
  }

  putManifest(manifest) {
    return this.#run(MANIFESTS, 'readwrite', `saving the manifest of ${manifest.id}`, (s) => s.put(manifest));
  }

  /** The stored bytes, or null when there is no such record (never stored, or evicted). */
  async getTensor(model, name, hash) {
    const rec = await this.#run(TENSORS, 'readonly', `reading ${name}`, (s) => s.get([model, name, hash]));
    return rec ? new Uint8Array(rec.bytes) : null;
  }

  /** Stores `bytes` under its SHA-256, replacing any other version of the tensor; returns the hash. */
  async putTensor(model, name, bytes) {
    const hash = await sha256Hex(bytes);
    const own = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes.buffer : bytes.slice().buffer;
    await this.#run(TENSORS, 'readwrite', `storing ${name}`, (s) => {
      s.delete(IDBKeyRange.bound([model, name, ''], [model, name, []]));
      return s.put({ model, name, hash, bytes: own });
    });
    return hash;
  }

  deleteTensor(model, name, hash) {
    return this.#run(TENSORS, 'readwrite', `deleting ${name}`, (s) => s.delete([model, name, hash]));
  }

  /** Removes the manifests (and their tensors) whose repo is `repo`, or everything. */
  async clear(repo) {
    const manifests = (await this.#run(MANIFESTS, 'readonly', 'listing manifests', (s) => s.getAll())) ?? [];
    for (const m of manifests) {
      if (repo !== undefined && m.repo !== repo) continue;
      await this.#run(TENSORS, 'readwrite', `clearing ${m.id}`, (s) => s.delete(modelRange(m.id)));
      await this.#run(MANIFESTS, 'readwrite', `clearing ${m.id}`, (s) => s.delete(m.id));
    }
  }
}

/** Deletes the whole weight database; waits while other connections close (they do on versionchange). */
export async function deleteWeightDatabase() {
  try {
    await done(indexedDB.deleteDatabase(DB_NAME));
  } catch (e) {
    throw new StorageError(`could not delete the weight store: ${e?.message ?? e}`);
  }
}
