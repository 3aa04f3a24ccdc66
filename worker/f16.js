// Weight conversion for the f16w store: f32/bf16 → f16 with round-to-nearest-even, bit for bit what the
// engine's own f32 → f16 packing does (so a tensor stored as f16 loads exactly as the f32 original would).

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

/** IEEE binary32 bits → binary16 bits, round to nearest even (NaN becomes a quiet NaN). */
export function f16BitsFromF32Bits(u) {
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  const mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 112; // rebias 127 → 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++; // a carry into the exponent is correct (→ inf)
  return sign | h;
}

export function f16FromNumber(x) {
  scratch[0] = x;
  return f16BitsFromF32Bits(scratchBits[0]);
}

/** Bytes of `count` f32 (or bf16) values, little-endian, as a Uint32Array of f32 bits. */
function f32Bits(bytes, dtype) {
  if (dtype === 'F32') {
    const own = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
    return new Uint32Array(own.buffer, own.byteOffset, own.byteLength / 4);
  }
  const own = bytes.byteOffset % 2 === 0 ? bytes : bytes.slice();
  const bf = new Uint16Array(own.buffer, own.byteOffset, own.byteLength / 2);
  const out = new Uint32Array(bf.length);
  for (let i = 0; i < bf.length; i++) out[i] = bf[i] << 16;
  return out;
}

/**
 * F32 or BF16 bytes → F16 bytes. Uses the platform's Float16Array (exact RNE) where there is one,
 * else the bit-level conversion above.
 */
export function toF16Bytes(bytes, dtype, useNative = typeof Float16Array === 'function') {
  const bits = f32Bits(bytes, dtype);
  if (useNative) {
    // eslint-disable-next-line no-undef
    const h = new Float16Array(new Float32Array(bits.buffer, bits.byteOffset, bits.length));
    return new Uint8Array(h.buffer);
  }
  const out = new Uint16Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = f16BitsFromF32Bits(bits[i]);
  return new Uint8Array(out.buffer);
}
