// Assembles the package in web/dist: the page-side modules (src/), the worker (../worker/), and the
// engine built by wasm-bindgen --target web (default ../web/pkg, or --engine <dir>).
//   node build.mjs [--engine <dir>]   build
//   node build.mjs --check            fail unless dist/ is complete (npm prepack)
import { cpSync, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');
const args = process.argv.slice(2);
const ENGINE_FILES = ['dia_webgpu.js', 'dia_webgpu_bg.wasm', 'dia_webgpu.d.ts', 'dia_webgpu_bg.wasm.d.ts'];

function fail(message) {
  console.error(`build.mjs: ${message}`);
  process.exit(1);
}

if (args[0] === '--check') {
  for (const f of ['index.js', 'index.d.ts', 'player-worklet.js', 'worker/worker.js', 'wasm/dia_webgpu.js']) {
    if (!existsSync(join(dist, f))) fail(`dist/${f} is missing: run "node build.mjs" after building the wasm (see README)`);
  }
  process.exit(0);
}

const engineAt = args[0] === '--engine' ? resolve(args[1] ?? fail('--engine needs a directory')) : join(here, 'pkg');
if (!existsSync(join(engineAt, 'dia_webgpu.js'))) {
  fail(`${engineAt}/dia_webgpu.js not found: build the wasm first (cargo build --release --target wasm32-unknown-unknown --lib, then wasm-bindgen --target web --out-dir web/pkg)`);
}

rmSync(dist, { recursive: true, force: true });
mkdirSync(join(dist, 'wasm'), { recursive: true });
cpSync(join(here, 'src'), dist, { recursive: true });
// worker/package.json only marks the sources as ES modules for node; the package's own says so already.
cpSync(join(here, '..', 'worker'), join(dist, 'worker'), { recursive: true, filter: (src) => !src.endsWith('package.json') });
for (const f of ENGINE_FILES) if (existsSync(join(engineAt, f))) cpSync(join(engineAt, f), join(dist, 'wasm', f));
const files = (d) => readdirSync(d, { recursive: true }).length;
console.log(`build.mjs: dist/ assembled (${files(dist)} entries; engine from ${engineAt})`);
