// Types of dia-webgpu.

export declare const SAMPLE_RATE: 44100;

/** The engine's weight modes: f32 (exact), f16w (f16 weights), q8 / q4 (block-quantized matrices; q4 keeps the
 *  attention projections in 8 bits). Arithmetic is f32 in every mode; none needs shader-f16. */
export type Numerics = 'f32' | 'f16w' | 'q8' | 'q4';
/** A mode, or 'auto' (the default): the mode `chooseDtype` picks for this adapter and device (web/README.md). */
export type Dtype = Numerics | 'auto';

/** Bytes of GPU memory the engine's buffers hold now, and the most they have held since the engine started. */
export interface GpuMemory {
  allocated: number;
  peak: number;
}

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
  /** "auto" (default: picked per adapter, see chooseDtype; a converted checkpoint's own mode when it takes no
   *  more memory), "f16w" (f16 weights), "q8", "q4" (quantized) or "f32" (exact, the most memory). */
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
  /** The mode the engine runs in. */
  numerics: Numerics;
  /** Why: "requested", or "auto: …" with the rule that chose it. */
  numericsReason: string;
  /** The mode the model checkpoint was converted for (`dia-tts convert`), or null for an original checkpoint. */
  converted: Numerics | null;
  /** True when not a single request was made (everything came from the weight store). */
  fromCache: boolean;
  requests: number;
  /** Bytes that came over the network in this load. */
  networkBytes: number;
  /** Checkpoint bytes of every tensor loaded (model + codec): what a first load downloads. */
  downloadBytes: number;
  /** Bytes of their stored form (model + codec): what the weight store holds (or would, with cache: false). */
  storedBytes: number;
  /** GPU memory once loaded (weights, codec and the engine's fixed buffers). */
  gpuMemory: GpuMemory;
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
  /** Checkpoint bytes of this component's tensors. */
  downloadBytes: number;
  /** Bytes of their stored form. */
  storedBytes: number;
}

/** Audio of a voice prompt: Float32Array = mono 44.1 kHz samples; anything else is decoded and resampled. */
export type PromptAudio = Float32Array | AudioBuffer | Blob | ArrayBuffer;

/** A voice prompt with what it says. */
export interface VoicePrompt {
  audio: PromptAudio;
  /** The prompt's transcript with its speaker tags ("[S1] … [S2] …"). Every segment of the text continues the
   *  prompt with its transcript in front, so the speakers keep its voices. Needed when the text is longer than one
   *  segment; without it, the text itself must begin with the transcript. */
  transcript?: string;
}

/** Where a generation stands, reported at the start of every segment (`rows` 0) and as its rows come. */
export interface GenerationProgress {
  /** The segment being generated, from 0, and how many the text was split into (1 for a short text). */
  segment: number;
  segments: number;
  /** Decoder rows generated so far in this segment, and the splitter's estimate of its rows (86 a second). */
  rows: number;
  estimatedRows: number;
  /** Audio frames (512 samples) and seconds handed out so far, over the whole text. */
  framesOut: number;
  audioSeconds: number;
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
  /** Rows to generate at most, per segment (86 per second of audio). Default: up to the model's limit. */
  maxNewTokens?: number;
  /** Voice to continue: `{ audio, transcript }`, or the audio alone (its transcript must then begin `text`, and the
   *  text must be one segment long). */
  prompt?: PromptAudio | VoicePrompt;
  /** Segment i of n, rows generated, audio handed out; see GenerationProgress. */
  onProgress?: (progress: GenerationProgress) => void;
  signal?: AbortSignal;
  /** @internal Test-only (the package's own tests): a Rust panic, or a GPU device loss, during the generation. */
  testHook?: 'panic' | 'lose-device';
}

export interface GenerationStats {
  samples: number;
  /** Decoder steps, over all segments. */
  steps: number;
  seconds: number;
  /** Segments the text was spoken in (1 for a text that fits one). */
  segments: number;
  /** GPU memory after the generation; `peak` includes its caches and activations. */
  gpuMemory: GpuMemory;
}

export interface GeneratedAudio extends GenerationStats {
  audio: Float32Array;
  samplingRate: 44100;
}

/** Where a list generation stands: reported when a batch starts (`rows` 0) and as its rows come. */
export interface BatchProgress {
  /** The batch being generated, from 0, and how many there are. */
  batch: number;
  batches: number;
  /** List index of the batch's first text, and its number of texts. */
  firstItem: number;
  items: number;
  /** Decoder rows generated so far in this batch (it ends with its longest text), and the most it may generate. */
  rows: number;
  maxRows: number;
  /** Texts handed to `onText` so far. */
  done: number;
}

/** One text of a list, spoken: what `generate(text)` returns, plus its place in the list. `seconds`: its batch's
 *  time until this text was ready; `segments` is always 1. */
export interface GeneratedText extends GeneratedAudio {
  index: number;
}

/** Options of `generate([...texts])`: those of one generation (`maxNewTokens` per text; `prompt` continued by every
 *  text, its transcript put in front of each), with batch progress and per-text results. */
export interface GenerateListOptions extends Omit<GenerateOptions, 'onProgress' | 'testHook'> {
  /** Texts per batch (per decoder step), 1 to 64. Default: as many as the device binds, up to 8. */
  batchSize?: number;
  /** Called with each text's result in list order, as its batch finishes. Throwing stops the generation. */
  onText?: (index: number, result: GeneratedText) => void;
  onProgress?: (progress: BatchProgress) => void;
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
  /** The device signals dtype 'auto' reads besides the adapter. */
  device?: DeviceSignals;
  /** What dtype 'auto' loads here (before a converted checkpoint's own mode is considered). */
  autoDtype?: { dtype: 'f16w' | 'q8' | 'q4'; reason: string };
}

export interface DeviceSignals {
  /** navigator.userAgentData.mobile, else a mobile user agent string. */
  mobile: boolean;
  /** navigator.deviceMemory in GB, where the browser tells it. */
  deviceMemory?: number;
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
  /** Each text of the list as its own audio, several texts per decoder step; one result per text, in list order. */
  generate(texts: readonly string[], options?: GenerateListOptions): Promise<GeneratedText[]>;
  stream(text: string, options?: GenerateOptions): DiaStream;
  speak(text: string, options?: SpeakOptions): Promise<SpokenAudio>;
  cancel(): Promise<void>;
  dispose(): Promise<void>;
}

export declare function toWav(audio: Float32Array | { audio: Float32Array; samplingRate?: number }, samplingRate?: number, options?: { float?: boolean }): Uint8Array;
export declare function decodeAudio(input: Blob | ArrayBuffer | Uint8Array): Promise<Float32Array>;
export declare function capabilities(): Promise<Capabilities>;
/** The rule behind dtype 'auto' (pure; web/README.md): q4 on mobile devices, with ≤ 4 GB of memory, buffer limits
 *  under 1 GiB or GPUs that share system memory; f16w on NVIDIA/AMD GPUs with ≥ 2 GiB limits; q8 otherwise. */
export declare function chooseDtype(
  capabilities: Pick<Capabilities, 'adapter' | 'maxStorageBufferBindingSize' | 'maxBufferSize'>,
  device?: Partial<DeviceSignals>,
): { dtype: 'f16w' | 'q8' | 'q4'; reason: string };

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
  /** `details.code`, where the class has cases (EngineError, InvalidOptionError). */
  readonly code?: string;
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
export declare class InvalidOptionError extends DiaError {
  /** Set when the engine refused the text: 'script-too-long' (more than the 256 KiB the splitter takes;
   *  `details.bytes`, `details.limit`), 'nothing-to-speak' (empty, whitespace or speaker tags only),
   *  'voice-needs-transcript' (a voice prompt without its transcript on a text of several segments;
   *  `details.segments`). For a list of texts: 'empty-list'; 'nothing-to-speak', 'not-a-string' or 'text-too-long'
   *  (over the 1024 bytes one generation reads; `details.bytes`, `details.limit`) with `details.index`, the text's
   *  place in the list; 'batch-too-large' (`details.size`, `details.max`). */
  readonly code?: 'script-too-long' | 'nothing-to-speak' | 'voice-needs-transcript' | 'empty-list' | 'not-a-string' | 'text-too-long' | 'batch-too-large';
}
