// The demo page. Query parameters (for local checkpoints): ?model=org/name&codec=org/name&base=URL&dtype=q4
import { decodeAudio, DiaTTS, PcmPlayer, SAMPLE_RATE, toWav } from '../dist/index.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const source = {
  model: params.get('model') ?? undefined,
  codec: params.get('codec') ?? undefined,
  baseUrl: params.get('base') ?? undefined,
};
if (params.get('dtype')) $('dtype').value = params.get('dtype');

const SHORT_EXAMPLE = $('text').value;
// About a minute of dialogue: the package splits it at speaker turns and sentences into segments of 5–10 s.
const LONG_EXAMPLE = [
  '[S1] Welcome back to the show. Today we are talking about speech synthesis that runs entirely in a web browser.',
  '[S2] Thanks for having me. It still surprises people that a model with more than a billion parameters can run on the graphics card of an ordinary laptop.',
  '[S1] So how does it work? (clears throat) Walk me through it.',
  '[S2] The weights are downloaded once and kept in the browser. Then every step of the model runs as a small program on the GPU, through WebGPU.',
  '[S1] And a long script like this one? The model only speaks about thirty seconds at a time.',
  '[S2] Right. The script is cut at speaker turns and sentences, and each piece is spoken as a continuation of the one before it, so the voices stay the same.',
  '[S1] And you hear it as one recording, without gaps?',
  '[S2] Exactly. The audio of all the pieces is decoded as one stream. (laughs) You are listening to it right now.',
  '[S1] Amazing. Thanks for coming on.',
  '[S2] My pleasure.',
].join(' ');

let tts = null;
let audio = null; // the last generated utterance
let prompt = null; // voice prompt samples
let context = null;
let player = null;
let playback = null;

function setStatus(state, text, extra = {}) {
  const el = $('status');
  el.dataset.state = state;
  el.textContent = text;
  Object.assign(el.dataset, extra);
}

function showError(e) {
  $('error').textContent = e ? `${e.name}: ${e.message}` : '';
}

function setBusy(busy) {
  $('generate').disabled = busy || !tts;
  $('load').disabled = busy;
  $('stop').disabled = !busy;
  $('play').disabled = busy || !audio;
}

const mb = (bytes) => (bytes / 1e6).toFixed(1);

async function showCapabilities() {
  const caps = await DiaTTS.capabilities();
  if (!caps.webgpu) {
    $('caps').textContent = caps.reason;
    $('load').disabled = true;
    return;
  }
  const a = caps.adapter;
  $('caps').textContent =
    `WebGPU adapter: ${a.description || a.vendor || 'unknown'}${a.isFallbackAdapter ? ' (software fallback)' : ''}; ` +
    `shader-f16 ${caps.shaderF16 ? 'yes' : 'no'} (not needed); max buffer binding ${mb(caps.maxStorageBufferBindingSize)} MB; ` +
    `${caps.crossOriginIsolated ? 'cross-origin isolated (shared-memory audio)' : 'not cross-origin isolated'}; ` +
    `auto weights: ${caps.autoDtype.dtype} (${caps.autoDtype.reason}).`;
}

/** Download, stored and GPU sizes of the loaded mode (`peak`: after the last generation, when there was one). */
function showSizes(info, gpu = info.gpuMemory) {
  const el = $('sizes');
  el.textContent =
    `${info.numerics} (${info.numericsReason}): download ${mb(info.downloadBytes)} MB, stored ${mb(info.storedBytes)} MB, ` +
    `GPU memory ${mb(gpu.allocated)} MB (peak ${mb(gpu.peak)} MB).`;
  Object.assign(el.dataset, { numerics: info.numerics, download: String(info.downloadBytes), stored: String(info.storedBytes), gpu: String(gpu.allocated), gpuPeak: String(gpu.peak) });
}

async function load() {
  showError(null);
  setBusy(true);
  $('stop').disabled = true;
  setStatus('loading', 'Loading…');
  try {
    await tts?.dispose();
    tts = null;
    tts = await DiaTTS.load({
      ...source,
      dtype: $('dtype').value,
      onProgress: (p) => {
        $('progress').value = p.progress;
        const what = p.status === 'resolving' ? `reading ${p.component} headers` : `${p.status} ${p.tensor ?? ''}`;
        setStatus('loading', `${mb(p.loaded)} / ${mb(p.total)} MB, ${p.tensorsLoaded} / ${p.tensorsTotal} tensors — ${what}`);
      },
    });
    const i = tts.info;
    $('progress').value = 100;
    setStatus('ready', `Ready in ${i.seconds.toFixed(1)} s: ${i.tensors} tensors, ${i.fromCache ? 'all from this browser\'s storage' : `${mb(i.networkBytes)} MB downloaded`}. ${i.adapterInfo}`);
    showSizes(i);
  } catch (e) {
    setStatus('error', 'Loading failed.');
    showError(e);
  } finally {
    setBusy(false);
  }
}

function number(id) {
  const v = $(id).value.trim();
  return v === '' ? undefined : Number(v);
}

function drawWaveform(chunks, total, span = Math.max(total, 5 * SAMPLE_RATE)) {
  const canvas = $('waveform');
  const g = canvas.getContext('2d');
  const { width, height } = canvas;
  g.fillStyle = '#10151c';
  g.fillRect(0, 0, width, height);
  g.fillStyle = '#5b8cff';
  // Normalised to the loudest sample so far, so quiet audio is still visible.
  let peak = 1e-6;
  for (const chunk of chunks) for (let i = 0; i < chunk.length; i++) peak = Math.max(peak, Math.abs(chunk[i]));
  const gain = 0.95 / peak;
  // One min/max bar per pixel column; while generating, the scale is at least 5 s so it does not jump.
  const perColumn = span / width;
  const bar = (x, lo, hi) => g.fillRect(x, (0.5 - hi / 2) * height, 1, Math.max(1, ((hi - lo) / 2) * height));
  let column = 0;
  let lo = 0;
  let hi = 0;
  let seen = 0;
  for (const chunk of chunks) {
    for (let i = 0; i < chunk.length; i++, seen++) {
      const c = Math.floor(seen / perColumn);
      if (c !== column) {
        bar(column, lo * gain, hi * gain);
        column = c;
        lo = hi = 0;
      }
      lo = Math.min(lo, chunk[i]);
      hi = Math.max(hi, chunk[i]);
    }
  }
  if (seen) bar(column, lo * gain, hi * gain);
}

function offerDownload(samples) {
  const link = $('download');
  if (link.href.startsWith('blob:')) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([toWav(samples, SAMPLE_RATE)], { type: 'audio/wav' }));
  link.setAttribute('aria-disabled', 'false');
}

function showTextInfo() {
  const bytes = new TextEncoder().encode($('text').value).length;
  $('text-info').textContent = `${bytes} bytes${bytes > 160 ? ' (spoken in segments)' : ''}`;
}

/** Segment i of n and the rows of the current one, of `maxRows` at most (`null`: nothing running; the last
 *  segment shown stays in the element's data attributes). */
function showSegment(p, maxRows) {
  const el = $('segment');
  const bar = $('segment-progress');
  bar.hidden = !p;
  if (!p) {
    el.textContent = '';
    return;
  }
  // The rows a segment is expected to take: the estimate, unless "Max tokens" caps it.
  const planned = Math.min(p.estimatedRows, maxRows ?? Infinity);
  el.textContent = `Segment ${p.segment + 1} of ${p.segments}: ${p.rows} of ~${planned} rows · ${p.audioSeconds.toFixed(1)} s of audio out`;
  Object.assign(el.dataset, { segment: String(p.segment + 1), segments: String(p.segments) });
  // Whole segments done plus this one's share (its rows can run past the estimate).
  bar.max = p.segments;
  bar.value = p.segment + Math.min(1, p.rows / Math.max(1, planned));
}

async function generate() {
  showError(null);
  setBusy(true);
  const chunks = [];
  let total = 0;
  const promptText = $('prompt-text').value.trim();
  const text = $('text').value;
  $('segment').textContent = '';
  const options = {
    temperature: number('temperature'),
    topP: number('top-p'),
    cfgScale: number('cfg-scale'),
    cfgFilterTopK: number('top-k'),
    seed: number('seed') ?? Math.floor(Math.random() * 2 ** 31),
    maxNewTokens: number('max-tokens'),
    prompt: prompt ? { audio: prompt, transcript: promptText || undefined } : undefined,
    onProgress: (p) => showSegment(p, number('max-tokens')),
    onChunk: (pcm) => {
      chunks.push(pcm);
      total += pcm.length;
      drawWaveform(chunks, total);
      setStatus('generating', `Generating… ${(total / SAMPLE_RATE).toFixed(1)} s of audio`);
    },
  };
  setStatus('generating', 'Generating…');
  try {
    const r = $('play-stream').checked ? await tts.speak(text, options) : await tts.generate(text, options);
    audio = r.audio;
    drawWaveform([audio], audio.length, audio.length);
    offerDownload(audio);
    const speed = audio.length / SAMPLE_RATE / r.seconds;
    const segments = r.segments > 1 ? ` in ${r.segments} segments` : '';
    $('result').textContent = `${(audio.length / SAMPLE_RATE).toFixed(2)} s of audio${segments}, ${r.steps} steps in ${r.seconds.toFixed(1)} s (${speed >= 0.1 ? speed.toFixed(2) : speed.toPrecision(2)}× real time).`;
    showSizes(tts.info, r.gpuMemory);
    setStatus('done', 'Done.', { samples: String(audio.length), segments: String(r.segments) });
  } catch (e) {
    setStatus(e.name === 'CancelledError' ? 'ready' : 'error', e.name === 'CancelledError' ? 'Stopped.' : 'Generation failed.');
    if (e.name !== 'CancelledError') showError(e);
  } finally {
    showSegment(null);
    setBusy(false);
  }
}

async function play() {
  if (!audio) return;
  context ??= new AudioContext();
  await context.resume();
  player ??= await PcmPlayer.create(context);
  playback = player.start();
  playback.push(audio);
  playback.end();
  $('stop').disabled = false;
  await playback.finished;
  $('stop').disabled = true;
}

async function stop() {
  playback?.stop();
  await tts?.cancel();
}

async function choosePrompt() {
  const file = $('prompt').files[0];
  prompt = null;
  $('prompt-info').textContent = '';
  if (!file) return;
  try {
    prompt = await decodeAudio(file);
    $('prompt-info').textContent = `${(prompt.length / SAMPLE_RATE).toFixed(1)} s, mono 44.1 kHz`;
  } catch (e) {
    showError(e);
  }
}

$('load').addEventListener('click', load);
$('text').addEventListener('input', showTextInfo);
for (const [id, example] of [['example-short', SHORT_EXAMPLE], ['example-long', LONG_EXAMPLE]]) {
  $(id).addEventListener('click', () => {
    $('text').value = example;
    showTextInfo();
  });
}
$('generate').addEventListener('click', generate);
$('play').addEventListener('click', play);
$('stop').addEventListener('click', stop);
$('prompt').addEventListener('change', choosePrompt);
$('clear').addEventListener('click', async () => {
  await tts?.dispose();
  tts = null;
  setBusy(false);
  await DiaTTS.clearCache();
  setStatus('idle', 'Stored weights cleared.');
});
drawWaveform([], 0);
showTextInfo();
showCapabilities().catch(showError);
