// The benchmark page: settings, progress and results around bench-core.js, which does the measuring (the Node
// runner tests/browser/bench.mjs runs the same module). The engine runs on this page's thread: the measuring
// module awaits the GPU between steps, so the page stays responsive enough to show progress.
// Query parameters preset the form, and `autorun=1` starts at once (the browser tests do):
//   bench.html?config=tiny&numerics=q8,f32&steps=24&runs=1&warmup=24&autorun=1   (batch=1,8: also time batches)
// When a run ends, body[data-state] is "done" (or "failed") and window.benchReport holds the report.
import initEngine, * as engine from '../dist/wasm/dia_webgpu.js';
import { BENCH_CONFIGS, NUMERICS, SUMMARY_COLUMNS, benchOptions, describeAdapter, runBenchmark, summaryRows } from './bench-core.js';

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const setState = (state) => (document.body.dataset.state = state);

function log(line) {
  $('log').textContent += `${line}\n`;
  $('log').scrollTop = $('log').scrollHeight;
  $('status').textContent = line.trim();
}

function showError(e) {
  $('error').textContent = String(e?.message ?? e);
  setState('failed');
}

// A Rust panic traps the engine outside any promise we await: show it rather than wait forever.
window.addEventListener('error', (e) => {
  if (document.body.dataset.state === 'running') showError(`engine failure: ${e.message}`);
});

function buildForm() {
  const chosen = query.get('numerics')?.split(',') ?? NUMERICS;
  $('modes').replaceChildren(
    ...NUMERICS.map((n) => {
      const label = document.createElement('label');
      const box = Object.assign(document.createElement('input'), { type: 'checkbox', value: n, checked: chosen.includes(n) });
      box.dataset.numerics = n;
      label.append(box, ` ${n} `);
      return label;
    }),
  );
  $('config').replaceChildren(...Object.entries(BENCH_CONFIGS).map(([key, c]) => new Option(c.label, key)));
  for (const [param, id] of [['config', 'config'], ['steps', 'steps'], ['runs', 'runs'], ['warmup', 'warmup'], ['batch', 'batches']]) {
    if (query.has(param)) $(id).value = query.get(param);
  }
  // The tiny model is done in seconds: fewer steps suit it.
  $('config').addEventListener('change', () => ($('steps').value = $('config').value === 'full' ? 500 : 100));
}

function readForm() {
  return benchOptions({
    config: $('config').value,
    numerics: [...document.querySelectorAll('#modes input:checked')].map((b) => b.value),
    steps: Number($('steps').value),
    runs: Number($('runs').value),
    warmupSteps: Number($('warmup').value),
    batches: $('batches').value.trim() === '' ? [] : $('batches').value.split(',').map((s) => (s.trim() === '' ? NaN : Number(s))),
  });
}

function showResults(report) {
  const head = document.createElement('tr');
  head.append(...SUMMARY_COLUMNS.map(([, title]) => Object.assign(document.createElement('th'), { textContent: title })));
  $('results').tHead.replaceChildren(head);
  $('results').tBodies[0].replaceChildren(
    ...summaryRows(report).map((r) => {
      const tr = document.createElement('tr');
      tr.dataset.numerics = r.numerics;
      if (r.error) {
        tr.append(Object.assign(document.createElement('td'), { textContent: r.numerics }));
        tr.append(Object.assign(document.createElement('td'), { textContent: `failed: ${r.error}`, colSpan: SUMMARY_COLUMNS.length - 1, className: 'failed' }));
      } else {
        tr.append(...SUMMARY_COLUMNS.map(([key]) => Object.assign(document.createElement('td'), { textContent: r[key] })));
      }
      return tr;
    }),
  );
  $('json').value = JSON.stringify(report, null, 1);
  $('copy').disabled = false;
}

async function run() {
  let options;
  try {
    options = readForm();
  } catch (e) {
    return showError(e);
  }
  $('run').disabled = true;
  $('error').textContent = '';
  $('log').textContent = '';
  setState('running');
  try {
    const environment = { runner: 'page', userAgent: navigator.userAgent, deviceMemory: navigator.deviceMemory ?? null, page: location.href };
    const progress = ({ numerics, bytes, totalBytes }) => ($('status').textContent = `${numerics}: building the model, ${((100 * bytes) / totalBytes).toFixed(0)} % of the random weights put`);
    const report = await runBenchmark(engine, { ...options, environment, log, progress });
    window.benchReport = report;
    showResults(report);
    const failed = report.modes.filter((m) => !m.ok).map((m) => m.numerics);
    log(failed.length ? `done; failed: ${failed.join(', ')}` : 'done');
    setState('done');
  } catch (e) {
    showError(e);
  } finally {
    $('run').disabled = false;
  }
}

async function main() {
  buildForm();
  const adapter = await describeAdapter();
  if (!adapter.available) {
    $('caps').textContent = 'WebGPU is not available in this browser (or it gave no adapter): the benchmark cannot run here.';
    setState('unavailable');
    return;
  }
  const i = adapter.info;
  const name = [i.vendor, i.architecture, i.description].filter(Boolean).join(' · ') || 'an unnamed adapter';
  $('caps').textContent = `WebGPU adapter: ${name}${i.isFallbackAdapter ? ' (software fallback)' : ''}; shader-f16 ${adapter.features.includes('shader-f16') ? 'yes' : 'no'}, subgroups ${adapter.features.includes('subgroups') ? 'yes' : 'no'}; largest binding ${(adapter.limits.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB.`;
  await initEngine();
  $('run').disabled = false;
  $('run').addEventListener('click', run);
  $('copy').addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText($('json').value);
      $('copied').textContent = 'copied';
    } catch {
      $('json').select(); // clipboard refused (permissions): the text is selected for copying by hand
      $('copied').textContent = 'selected: press Ctrl+C / ⌘C';
    }
  });
  setState('ready');
  if (query.get('autorun') === '1') await run();
}

main().catch(showError);
