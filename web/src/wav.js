// WAV encoding of mono PCM: 16-bit integer (default, plays everywhere) or 32-bit float.
import { SAMPLE_RATE } from './player.js';

/**
 * @param {Float32Array | { audio: Float32Array, samplingRate?: number }} audio
 * @param {number} [samplingRate]
 * @param {{ float?: boolean }} [options]
 * @returns {Uint8Array} a complete RIFF/WAVE file
 */
export function toWav(audio, samplingRate, { float = false } = {}) {
  if (!(audio instanceof Float32Array)) {
    samplingRate ??= audio?.samplingRate;
    audio = audio?.audio;
  }
  if (!(audio instanceof Float32Array)) throw new TypeError('toWav: expected a Float32Array or { audio, samplingRate }');
  samplingRate ??= SAMPLE_RATE;
  const bytesPerSample = float ? 4 : 2;
  const dataBytes = audio.length * bytesPerSample;
  const out = new Uint8Array(44 + dataBytes);
  const v = new DataView(out.buffer);
  const ascii = (at, s) => [...s].forEach((c, i) => v.setUint8(at + i, c.charCodeAt(0)));
  ascii(0, 'RIFF');
  v.setUint32(4, 36 + dataBytes, true);
  ascii(8, 'WAVE');
  ascii(12, 'fmt ');
  v.setUint32(16, 16, true);
  v.setUint16(20, float ? 3 : 1, true); // 3 = IEEE float, 1 = integer PCM
  v.setUint16(22, 1, true);
  v.setUint32(24, samplingRate, true);
  v.setUint32(28, samplingRate * bytesPerSample, true);
  v.setUint16(32, bytesPerSample, true);
  v.setUint16(34, 8 * bytesPerSample, true);
  ascii(36, 'data');
  v.setUint32(40, dataBytes, true);
  for (let i = 0; i < audio.length; i++) {
    const x = audio[i];
    if (float) v.setFloat32(44 + 4 * i, x, true);
    else v.setInt16(44 + 2 * i, Math.round(Math.max(-1, Math.min(1, Number.isNaN(x) ? 0 : x)) * 32767), true);
  }
  return out;
}
