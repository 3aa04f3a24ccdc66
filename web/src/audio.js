// Voice prompts: any audio the browser can decode → mono 44.1 kHz Float32Array.
import { SAMPLE_RATE } from './player.js';

/** Renders an AudioBuffer to mono (WebAudio's down-mix) at 44.1 kHz. */
export async function toMono44k(buffer) {
  if (buffer.numberOfChannels === 1 && buffer.sampleRate === SAMPLE_RATE) return buffer.getChannelData(0).slice();
  const frames = Math.max(1, Math.ceil(buffer.duration * SAMPLE_RATE));
  const ctx = new OfflineAudioContext(1, frames, SAMPLE_RATE);
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(ctx.destination);
  source.start();
  return (await ctx.startRendering()).getChannelData(0).slice();
}

/**
 * Decodes an audio file (WAV, MP3, Ogg… whatever `decodeAudioData` takes) to mono 44.1 kHz samples.
 * @param {Blob | ArrayBuffer | Uint8Array} input
 */
export async function decodeAudio(input) {
  let bytes;
  if (input instanceof Blob) bytes = await input.arrayBuffer();
  else if (input instanceof ArrayBuffer) bytes = input.slice(0);
  else if (ArrayBuffer.isView(input)) bytes = input.buffer.slice(input.byteOffset, input.byteOffset + input.byteLength);
  else throw new TypeError('decodeAudio: expected a Blob, ArrayBuffer or Uint8Array');
  // decodeAudioData resamples to its context's rate.
  const ctx = new OfflineAudioContext(1, 1, SAMPLE_RATE);
  return toMono44k(await ctx.decodeAudioData(bytes));
}
