// Types of dia-webgpu.

export declare const SAMPLE_RATE: 44100;

export type Dtype = 'f16w' | 'f32' | 'auto';

export interface LoadProgress {
  /** resolving: reading config + headers; downloading: bytes arriving; downloaded / cached: one tensor
   *  placed (from the network / from the weight store); corrupt: a stored tensor failed its SHA-256 check
   *  and is fetched again; missing: a stored tensor was gone (evicted) and is fetched again. */
  status: 'resolving' | 'downloading' | 'downloaded' | 'cached' | 'corrupt' | 'missing';
  component: 'model' | 'codec';
  tensor?: string;
  /** Bytes placed so far / in all (checkpoint bytes, whether from the network or the store). */
  loaded: number;
  total: number;
  /** 0–100. */
  progress: number;
  tensorsLoaded: number;
  tensorsTotal: number;
  /** Bytes that came over the network so far. */
  networkBytes: number;
}

export interface LoadOptions {
  /** Dia repository in the Hugging Face layout (default "nari-labs/Dia-1.6B-0626"). */
  model?: string;
  /** DAC repository (default "descript/dac_44khz"). */
  codec?: string;
  /** "f16w" (default: f16 weights, f32 arithmetic, no shader-f16 needed) or "f32" (exact, twice the memory). */
  dtype?: Dtype;
  onProgress?: (progress: LoadProgress) => void;
  /** Hub root: files are fetched from `{baseUrl}/{repo}/resolve/{revision}/{file}` (default https://huggingface.co). */
  baseUrl?: string;
  revision?: string;
  /** Keep weights in IndexedDB (default true). */
  cache?: boolean;
  /** Load the DAC encoder, needed for voice prompts (default true). */
  encoder?: boolean;
  /** Where the worker script is, for bundlers that move it (default: next to this module). */
  workerUrl?: string | URL;
}

export interface LoadInfo {
  adapterInfo: string;
  numerics: 'f16w' | 'f32';
  /** True when not a single request was made (everything came from the weight store). */
  fromCache: boolean;
  requests: number;
  networkBytes: number;
  tensors: number;
  model: ComponentStats;
  codec: ComponentStats;
  seconds: number;
}

export interface ComponentStats {
  cached: number;
  downloaded: number;
  /** Stored tensors whose hash did not match (fetched again). */
  corrupt: string[];
  /** Stored tensors that had disappeared (fetched again). */
  missing: string[];
}

export interface GenerateOptions {
  /** 0 = greedy (default 1.2). */
  temperature?: number;
  topP?: number;
  /** Classifier-free guidance scale (default 3). */
  cfgScale?: number;
  /** Top-k filter applied to the guided logits (default 45). */
  cfgFilterTopK?: number;
  seed?: number;
  maxNewTokens?: number;
  /** Voice to continue; its transcript should begin `text`. Float32Array = mono 44.1 kHz samples. */
  prompt?: Float32Array | AudioBuffer | Blob | ArrayBuffer;
  signal?: AbortSignal;
  /** @internal Test-only (the package's own tests): a Rust panic, or a GPU device loss, during the generation. */
  testHook?: 'panic' | 'lose-device';
}

export interface GenerationStats {
  samples: number;
  steps: number;
  seconds: number;
}

export interface GeneratedAudio extends GenerationStats {
  audio: Float32Array;
  samplingRate: 44100;
}

export interface SpeakOptions extends GenerateOptions {
  onChunk?: (pcm: Float32Array) => void;
  audioContext?: AudioContext;
  onPosition?: (position: { samples: number; seconds: number; underruns: number }) => void;
  /** Feed the worklet through a SharedArrayBuffer ring (default: when cross-origin isolated). */
  sharedMemory?: boolean;
}

export interface SpokenAudio extends GeneratedAudio {
  /** Samples the AudioWorklet consumed (= audio.length once playback completed). */
  played: number;
  underruns: number;
  /** Whether the worklet was fed through a SharedArrayBuffer ring (else transferred chunks). */
  sharedMemory: boolean;
}

export interface DiaStream extends AsyncIterableIterator<Float32Array> {
  result: Promise<GenerationStats>;
  cancel(): Promise<void>;
}

export interface Capabilities {
  webgpu: boolean;
  reason?: string;
  crossOriginIsolated: boolean;
  secureContext: boolean;
  adapter?: { vendor: string; architecture: string; description: string; isFallbackAdapter: boolean };
  shaderF16?: boolean;
  maxStorageBufferBindingSize?: number;
  maxBufferSize?: number;
}

export declare class DiaTTS {
  static load(options?: LoadOptions): Promise<DiaTTS>;
  /** Removes stored weights of one repository, or all of them. */
  static clearCache(options?: { model?: string }): Promise<void>;
  static capabilities(): Promise<Capabilities>;
  readonly samplingRate: 44100;
  readonly capabilities: Capabilities;
  readonly info: LoadInfo;
  readonly worker: Worker;
  /** The AudioContext `speak` created, once it has. */
  readonly audioContext: AudioContext | null;
  generate(text: string, options?: GenerateOptions & { onChunk?: (pcm: Float32Array) => void }): Promise<GeneratedAudio>;
  stream(text: string, options?: GenerateOptions): DiaStream;
  speak(text: string, options?: SpeakOptions): Promise<SpokenAudio>;
  cancel(): Promise<void>;
  dispose(): Promise<void>;
}

export declare function toWav(audio: Float32Array | { audio: Float32Array; samplingRate?: number }, samplingRate?: number, options?: { float?: boolean }): Uint8Array;
export declare function decodeAudio(input: Blob | ArrayBuffer | Uint8Array): Promise<Float32Array>;
export declare function capabilities(): Promise<Capabilities>;

export interface Playback {
  readonly stream: number;
  readonly finished: Promise<{ consumed: number; pushed: number; underruns: number; stopped: boolean }>;
  push(pcm: Float32Array): void;
  end(): void;
  stop(): void;
}

export declare class PcmPlayer {
  static create(context: BaseAudioContext, options?: { srcRate?: number; shared?: boolean; capacity?: number }): Promise<PcmPlayer>;
  readonly context: BaseAudioContext;
  readonly srcRate: number;
  readonly shared: boolean;
  start(options?: { onPosition?: (position: { samples: number; seconds: number; underruns: number }) => void }): Playback;
  close(): void;
}

export declare class DiaError extends Error {
  details: Record<string, unknown>;
}
export declare class WebGPUUnavailableError extends DiaError {}
export declare class DownloadError extends DiaError {}
export declare class RangeNotSupportedError extends DiaError {}
export declare class CheckpointError extends DiaError {}
export declare class QuotaExceededError extends DiaError {}
export declare class CacheEvictedError extends DiaError {}
export declare class StorageError extends DiaError {}
export declare class EngineError extends DiaError {
  /** Set when the failure ended the engine: 'device-lost' (the GPU device was lost), 'panic' (a Rust panic; the
   *  message carries its text) or 'crash' (another uncaught error in the worker). The DiaTTS starts a new engine
   *  (a new worker, weights from the store) for its next generation. */
  readonly code?: 'device-lost' | 'panic' | 'crash';
}
export declare class CancelledError extends DiaError {}
export declare class InvalidOptionError extends DiaError {}
