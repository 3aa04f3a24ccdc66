// Feature detection, before any download: WebGPU present, an adapter, its limits and features.
import { chooseDtype, deviceSignals } from './dtype.js';
import { WebGPUUnavailableError } from './worker/errors.js';

/** Largest Dia-1.6B weight matrix the engine binds, per numerics, in bytes: `dia::largest_matrix_bytes` for the
 *  1.6B config (crate/src/dia/model.rs; tests/weights.rs checks these figures against it). The decoder MLP gate/up
 *  (16384 × 2048) in f32 and f16; in q8 the decoder embedding (9252 × 2048, f16), in q4 the same table at q8. */
export const LARGEST_BINDING = { f32: 134217728, f16w: 67108864, q8: 37896192, q4: 20132352 };

/**
 * What this browser offers. Never throws: `webgpu` false with `reason` when unusable.
 * @returns {Promise<import('./index.js').Capabilities>}
 */
export async function capabilities() {
  const base = {
    webgpu: false,
    crossOriginIsolated: globalThis.crossOriginIsolated === true,
    secureContext: globalThis.isSecureContext !== false,
  };
  if (!base.secureContext) return { ...base, reason: 'WebGPU needs a secure context: serve the page over https or from localhost.' };
  const gpu = globalThis.navigator?.gpu;
  if (!gpu) {
    return { ...base, reason: 'This browser has no WebGPU (navigator.gpu is missing). Use a recent Chrome, Edge or Safari, or a browser with WebGPU enabled.' };
  }
  let adapter = null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  } catch {
    adapter = null;
  }
  if (!adapter) {
    return { ...base, reason: 'WebGPU is present but offered no GPU adapter (the GPU may be blocklisted or disabled; see chrome://gpu).' };
  }
  const info = adapter.info ?? {};
  const caps = {
    ...base,
    webgpu: true,
    adapter: { vendor: info.vendor ?? '', architecture: info.architecture ?? '', description: info.description ?? '', isFallbackAdapter: info.isFallbackAdapter ?? false },
    shaderF16: adapter.features.has('shader-f16'),
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
    maxBufferSize: adapter.limits.maxBufferSize,
    device: deviceSignals(),
  };
  return { ...caps, autoDtype: chooseDtype(caps, caps.device) };
}

/** Throws WebGPUUnavailableError with a readable message when `dtype` ('auto': the mode it picks here) cannot run here. */
export async function requireWebGPU(dtype) {
  const caps = await capabilities();
  if (!caps.webgpu) throw new WebGPUUnavailableError(caps.reason, { capabilities: caps });
  const numerics = dtype === 'auto' ? caps.autoDtype.dtype : dtype;
  const need = LARGEST_BINDING[numerics];
  const limit = Math.min(caps.maxStorageBufferBindingSize, caps.maxBufferSize);
  if (limit < need) {
    const hint = numerics === 'f32' && limit >= LARGEST_BINDING.f16w ? ' Load with dtype "f16w", "q8" or "q4", which need half as much.' : '';
    throw new WebGPUUnavailableError(
      `This GPU binds at most ${(limit / 2 ** 20).toFixed(0)} MiB per buffer; the model needs ${need / 2 ** 20} MiB in ${numerics}.${hint}`,
      { capabilities: caps, reason: 'limits' },
    );
  }
  return caps;
}
