// safetensors headers: 8-byte little-endian length, then JSON { name: { dtype, shape, data_offsets } }.
import { CheckpointError } from './errors.js';

// U32: the packed values of a quantized matrix in a converted checkpoint (`<base>.qweight`, `dia-tts convert`).
export const DTYPE_BYTES = { F32: 4, F16: 2, BF16: 2, U32: 4 };

/** Longest header accepted (the real Dia header is ~40 KB); guards against reading garbage as a length. */
export const MAX_HEADER_BYTES = 64 * 1024 * 1024;

export function headerLength(first8, file) {
  if (first8.byteLength !== 8) throw new CheckpointError(`${file}: file shorter than 8 bytes`, { file });
  const n = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (n === 0n || n > BigInt(MAX_HEADER_BYTES)) {
    throw new CheckpointError(`${file}: not a safetensors file (header length ${n})`, { file });
  }
  return Number(n);
}

/**
 * Parses a header into tensors with absolute byte ranges [begin, end) in `file`. Tensors of dtypes the
 * engine does not take are kept (flagged by their dtype) and rejected only if they are actually needed.
 * The array's `metadata` property is the header's `__metadata__` (string values only; {} if none).
 */
export function parseHeader(headerBytes, file, fileSize) {
  let json;
  try {
    json = JSON.parse(new TextDecoder().decode(headerBytes));
  } catch (e) {
    throw new CheckpointError(`${file}: header is not JSON (${e.message})`, { file });
  }
  const base = 8 + headerBytes.byteLength;
  const tensors = [];
  const meta = json?.__metadata__;
  tensors.metadata = Object.fromEntries(Object.entries(meta && typeof meta === 'object' ? meta : {}).filter(([, v]) => typeof v === 'string'));
  for (const [name, t] of Object.entries(json)) {
    if (name === '__metadata__') continue;
    const { dtype, shape, data_offsets: off } = t ?? {};
    if (typeof dtype !== 'string' || !Array.isArray(shape) || !Array.isArray(off) || off.length !== 2) {
      throw new CheckpointError(`${file}: malformed entry for ${name}`, { file, tensor: name });
    }
    const [b, e] = off;
    if (!(Number.isSafeInteger(b) && Number.isSafeInteger(e) && 0 <= b && b <= e)) {
      throw new CheckpointError(`${file}: bad data_offsets for ${name}`, { file, tensor: name });
    }
    if (fileSize !== undefined && base + e > fileSize) {
      throw new CheckpointError(`${file}: ${name} lies past the end of the file`, { file, tensor: name });
    }
    const size = DTYPE_BYTES[dtype];
    const numel = shape.reduce((a, d) => a * d, 1);
    if (size !== undefined && numel * size !== e - b) {
      throw new CheckpointError(`${file}: ${name} has ${e - b} bytes for shape [${shape}] ${dtype}`, { file, tensor: name });
    }
    tensors.push({ name, file, dtype, shape, begin: base + b, end: base + e });
  }
  return tensors;
}
