// The weight modes and the rule behind dtype 'auto' (no imports: unit-tested in node).

/** The engine's numerics modes, in the order of their GPU memory (largest first). */
export const DTYPES = ['f32', 'f16w', 'q8', 'q4'];

const GiB = 2 ** 30;

/** Vendors (GPUAdapterInfo.vendor, as Chrome names them) whose GPUs share the system's memory and its bandwidth. */
const SHARED_MEMORY_VENDORS = new Set(['intel', 'apple', 'arm', 'qualcomm', 'imagination', 'samsung', 'broadcom']);
/** Vendors of discrete GPUs with their own, fast memory. */
const DISCRETE_VENDORS = new Set(['nvidia', 'amd']);

const MOBILE_UA = /Android|iPhone|iPad|iPod|Mobile/i;

/**
 * What the page knows about the device beyond the adapter: `mobile` from `navigator.userAgentData.mobile`
 * (Chromium), else from the user agent string; `deviceMemory` in GB from `navigator.deviceMemory` (Chromium;
 * rounded, at most 8 on most versions), undefined where the browser does not say.
 */
export function deviceSignals(nav = globalThis.navigator) {
  const uaMobile = nav?.userAgentData?.mobile;
  const mobile = typeof uaMobile === 'boolean' ? uaMobile : MOBILE_UA.test(nav?.userAgent ?? '');
  const memory = nav?.deviceMemory;
  return { mobile, deviceMemory: typeof memory === 'number' && memory > 0 ? memory : undefined };
}

/**
 * The mode `dtype: 'auto'` loads, from the adapter (`vendor`, `isFallbackAdapter`), its limits
 * (`maxStorageBufferBindingSize`, `maxBufferSize`) and the device (`mobile`, `deviceMemory`). First rule that
 * applies (web/README.md explains it):
 * 1. a mobile device → q4;
 * 2. deviceMemory ≤ 4 GB → q4;
 * 3. a buffer limit below 1 GiB (the smaller of the two limits) → q4;
 * 4. a hardware GPU of a vendor whose GPUs share system memory (Intel, Apple, Arm, Qualcomm, Imagination,
 *    Samsung, Broadcom) → q4;
 * 5. an NVIDIA or AMD hardware GPU with limits of at least 2 GiB → f16w;
 * 6. anything else (software adapters such as SwiftShader, unknown vendors, smaller limits) → q8.
 * @returns {{ dtype: 'f16w' | 'q8' | 'q4', reason: string }}
 */
export function chooseDtype({ adapter = {}, maxStorageBufferBindingSize = 0, maxBufferSize = 0 } = {}, { mobile = false, deviceMemory } = {}) {
  const vendor = String(adapter.vendor ?? '').toLowerCase();
  const hardware = !adapter.isFallbackAdapter;
  const limit = Math.min(maxStorageBufferBindingSize, maxBufferSize);
  const gib = (x) => `${+(x / GiB).toFixed(2)} GiB`;
  if (mobile) return { dtype: 'q4', reason: 'a mobile device' };
  if (deviceMemory !== undefined && deviceMemory <= 4) return { dtype: 'q4', reason: `${deviceMemory} GB of device memory` };
  if (limit < GiB) return { dtype: 'q4', reason: `buffers limited to ${gib(limit)}` };
  if (hardware && SHARED_MEMORY_VENDORS.has(vendor)) return { dtype: 'q4', reason: `a ${vendor} GPU (shares the system memory and its bandwidth)` };
  if (hardware && DISCRETE_VENDORS.has(vendor) && limit >= 2 * GiB) return { dtype: 'f16w', reason: `a discrete-class ${vendor} GPU with ${gib(limit)} buffers` };
  const what = !hardware ? 'a software adapter' : vendor ? `a ${vendor} GPU with ${gib(limit)} buffers` : 'an adapter of unknown vendor';
  return { dtype: 'q8', reason: what };
}
