/**
 * Test harness for the NBD server: start a server over test devices, run real client
 * programs (qemu-img, qemu-io, nbdinfo, nbdcopy, python libnbd), temp dirs, checksums.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import type { BlockDevice } from '../../blockdev/types.js';
import { NbdServer, type ExportProvider, type NbdServerOptions } from '../../nbd/server.js';

export interface TestExport {
  device: BlockDevice;
  description?: string;
}

export interface Harness {
  server: NbdServer;
  port: number;
  host: string;
  provider: ExportProvider & { opens: number; releases: number };
  logs: Array<{ event: string; fields: Record<string, unknown> }>;
  uri(name: string): string;
}

/** Starts a server on 127.0.0.1 (random port) serving `exports`; closed on teardown. */
export async function startServer(
  t: ExecutionContext,
  exports: Record<string, TestExport>,
  opts: Partial<Omit<NbdServerOptions, 'provider'>> = {},
): Promise<Harness> {
  const logs: Harness['logs'] = [];
  const provider = {
    opens: 0,
    releases: 0,
    list: () => Object.entries(exports).map(([name, e]) => ({ name, ...(e.description ? { description: e.description } : {}) })),
    async open(name: string) {
      const e = exports[name];
      if (!e) return null;
      provider.opens++;
      return e.device;
    },
    release() {
      provider.releases++;
    },
  };
  const server = new NbdServer({ provider, log: (event, fields) => logs.push({ event, fields }), ...opts });
  const host = '127.0.0.1';
  const port = await server.listenTcp(0, host);
  t.teardown(() => server.close());
  return { server, port, host, provider, logs, uri: (name) => `nbd://${host}:${port}/${encodeURIComponent(name)}` };
}

/** Waits until the server has no connection left (clients exited, teardown done). */
export async function waitIdle(h: Harness, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (h.server.connections() > 0) {
    if (Date.now() > until) throw new Error(`server still has ${h.server.connections()} connections`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function tempDir(t: ExecutionContext, prefix = 'nbd-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a program; never throws for a non-zero exit (the test asserts on `code`). */
export function run(cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; input?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { timeout: opts.timeoutMs ?? 60000, maxBuffer: 64 * 1024 * 1024, env: opts.env ?? process.env, killSignal: 'SIGKILL' },
      (err, stdout, stderr) => {
        if (err && typeof (err as NodeJS.ErrnoException).code === 'string') return reject(err);
        resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stdout: String(stdout), stderr: String(stderr) });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

/** Like run() but a non-zero exit fails with the program's stderr. */
export async function runOk(cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

/** the system python that has the libnbd bindings (not a pyenv shim) */
export const PYTHON = '/usr/bin/python3';
export const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'test', 'fixtures', 'nbd');

/** Runs test/fixtures/nbd/<script> with JSON output on stdout. */
export async function runPython<T = unknown>(script: string, args: string[], timeoutMs = 60000): Promise<T> {
  const r = await run(PYTHON, [join(FIXTURES, script), ...args], { timeoutMs });
  if (r.code !== 0) throw new Error(`${script} ${args.join(' ')} exited ${r.code}: ${r.stderr}\n${r.stdout}`);
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`${script} printed no JSON: ${r.stdout}\n${r.stderr}`);
  }
}

export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

export function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (c) => h.update(c))
      .on('end', () => resolve(h.digest('hex')))
      .on('error', reject);
  });
}

/** Deterministic pseudo-random bytes (xorshift32), fast enough for tens of MiB. */
export function pseudoRandom(length: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(length + ((4 - (length % 4)) % 4));
  let x = seed >>> 0 || 0x9e3779b9;
  for (let i = 0; i < out.length; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.writeUInt32LE(x, i);
  }
  return out.subarray(0, length);
}

/**
 * A disk image with data and holes: each 1 MiB region is data (pseudo-random), a hole, or
 * half data; the layout is fixed by `seed`. Returns the bytes and the data/hole layout.
 */
export function makeImage(size: number, seed: number): { data: Buffer; holes: Array<[number, number]> } {
  const data = Buffer.alloc(size);
  const holes: Array<[number, number]> = [];
  const region = 1024 * 1024;
  for (let off = 0, i = 0; off < size; off += region, i++) {
    const n = Math.min(region, size - off);
    const kind = (i * 7 + seed) % 3;
    if (kind === 0) pseudoRandom(n, seed * 1000 + i).copy(data, off);
    else if (kind === 1) holes.push([off, n]);
    else {
      const half = Math.floor(n / 2);
      pseudoRandom(half, seed * 1000 + i).copy(data, off);
      if (n - half > 0) holes.push([off + half, n - half]);
    }
  }
  return { data, holes };
}

export async function writeImage(path: string, data: Buffer): Promise<void> {
  await writeFile(path, data);
}

/** Spawns a long-running process; killed on teardown. */
export function spawnDaemon(t: ExecutionContext, cmd: string, args: string[]): ReturnType<typeof spawn> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  return child;
}
