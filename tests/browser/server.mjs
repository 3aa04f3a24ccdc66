// Static server for the browser tests, on 127.0.0.1:
//   /hub/{org}/{name}/resolve/{rev}/{file}  hub-style model files with HTTP Range support; every request
//                                           is logged (path, range, status) so tests can count them
//   /{mount}/…                              static directories (the installed package, the test page)
//   /coi/…                                  the same with COOP/COEP (cross-origin isolated pages)
// Run directly, `node tests/browser/server.mjs [port]` serves the demo page (web/, built into web/dist)
// against the tiny random-weight model bundled in assets/tiny/, for trying the demo by hand.
import { createReadStream, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.css': 'text/css',
  '.png': 'image/png',
  '.wav': 'audio/wav',
  '.ts': 'text/plain',
};

/** `dir`/`rel` if it stays inside `dir` and is a file. */
function inside(dir, rel) {
  const path = normalize(join(dir, decodeURIComponent(rel)));
  if (path !== dir && !path.startsWith(dir + sep)) return null;
  try {
    return statSync(path).isFile() ? path : null;
  } catch {
    return null;
  }
}

/** Sends `file` (or the byte range the request asks for), recording the status in `entry`. */
function serveFile(req, res, file, headers, entry, ranges = true) {
  const size = statSync(file).size;
  const type = TYPES[extname(file)] ?? 'application/octet-stream';
  const range = ranges && req.headers.range?.match(/^bytes=(\d+)-(\d*)$/);
  let status = 200;
  let start = 0;
  let end = size - 1;
  if (range) {
    start = Number(range[1]);
    end = range[2] === '' ? size - 1 : Math.min(Number(range[2]), size - 1);
    if (start >= size || end < start) {
      if (entry) entry.status = 416;
      res.writeHead(416, { ...headers, 'Content-Range': `bytes */${size}` });
      return res.end();
    }
    status = 206;
    headers = { ...headers, 'Content-Range': `bytes ${start}-${end}/${size}` };
  }
  if (entry) entry.status = status;
  res.writeHead(status, { ...headers, 'Content-Type': type, 'Content-Length': end - start + 1, 'Accept-Ranges': 'bytes' });
  if (req.method === 'HEAD') return res.end();
  createReadStream(file, { start, end }).pipe(res);
}

/**
 * @param {{ repos: Record<string, string | { dir: string, delayMs?: number, failFirst?: number, ranges?: boolean }>,
 *           mounts: Record<string, string>, port?: number }} config
 *   repos: "org/name" → directory of its files, optionally answering after `delayMs`, failing the first
 *   `failFirst` requests with 503, or ignoring Range headers (`ranges: false`); mounts: "prefix" → directory;
 *   port: 0 (default) for any free one
 * @returns {Promise<{ origin: string, log: object[], close(): Promise<void> }>}
 */
export async function startServer({ repos, mounts, port = 0 }) {
  const log = [];
  const server = createServer((req, res) => {
    let path = new URL(req.url, 'http://x').pathname;
    const isolated = path.startsWith('/coi/');
    if (isolated) path = path.slice(4);
    const headers = { 'Cache-Control': 'no-store' };
    if (isolated) {
      headers['Cross-Origin-Opener-Policy'] = 'same-origin';
      headers['Cross-Origin-Embedder-Policy'] = 'require-corp';
      headers['Cross-Origin-Resource-Policy'] = 'same-origin';
    }
    const hub = path.match(/^\/hub\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/);
    let file = null;
    let entry = null;
    let repo = null;
    if (hub) {
      entry = { path, range: req.headers.range ?? null, status: 0 };
      log.push(entry);
      repo = typeof repos[hub[1]] === 'string' ? { dir: repos[hub[1]] } : repos[hub[1]];
      file = repo ? inside(repo.dir, hub[3]) : null;
      if (file && repo.failFirst > 0) {
        repo.failFirst--;
        entry.status = 503;
        res.writeHead(503, headers);
        return res.end('try again');
      }
    } else {
      const [, mount, rest] = path.match(/^\/([^/]+)\/(.*)$/) ?? [];
      if (mount && mounts[mount]) file = inside(mounts[mount], rest || 'index.html');
    }
    if (!file) {
      if (entry) entry.status = 404;
      res.writeHead(404, headers);
      return res.end('not found');
    }
    // A slow repository answers after a pause, so that a test can act while a load is under way.
    const serve = () => serveFile(req, res, file, headers, entry, repo?.ranges !== false);
    if (repo?.delayMs) setTimeout(serve, repo.delayMs);
    else serve();
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${server.address().port}`;
  return {
    origin,
    log,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
  const { origin } = await startServer({
    repos: { 'tiny/dia': join(root, 'assets/tiny/dia'), 'tiny/dac': join(root, 'assets/tiny/dac') },
    mounts: { pkg: join(root, 'web') },
    port: Number(process.argv[2] ?? 8080),
  });
  const query = new URLSearchParams({ model: 'tiny/dia', codec: 'tiny/dac', base: `${origin}/hub`, dtype: 'f32' });
  console.log(`demo with the tiny model: ${origin}/pkg/demo/index.html?${query}`);
  console.log(`cross-origin isolated (SharedArrayBuffer audio ring): ${origin}/coi/pkg/demo/index.html?${query}`);
  console.log('the real Dia 1.6B from huggingface.co: the same page without a query (downloads the full checkpoint once)');
}
