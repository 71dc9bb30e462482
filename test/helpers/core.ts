/** Helpers for core tests: a throw-away appliance, volume files, hashing, the CLI. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import { Appliance } from '../../gateway/appliance.js';
import { type ApplianceConfig, loadConfig } from '../../gateway/config.js';
import type { CodecName } from '../../drivers/codec.js';

export const CLI = fileURLToPath(new URL('../../tools/cli.js', import.meta.url));

export function tmpDir(t: ExecutionContext, prefix = 'bg-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export function writeConfig(dataDir: string, cfg: Partial<ApplianceConfig>): void {
  fs.mkdirSync(dataDir, { recursive: true });
  fs.writeFileSync(path.join(dataDir, 'blockgate.json'), JSON.stringify(cfg));
}

export async function openApp(t: ExecutionContext, opts: { chunkSize?: number; codec?: CodecName; dataDir?: string } = {}): Promise<Appliance> {
  const dataDir = opts.dataDir ?? path.join(tmpDir(t), 'data');
  writeConfig(dataDir, { chunkSize: opts.chunkSize ?? 64 * 1024, codec: opts.codec ?? 'zstd' });
  const app = await Appliance.open(loadConfig(dataDir));
  t.teardown(() => app.close());
  return app;
}

export function sha(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export function fileSha(file: string): string {
  return sha(fs.readFileSync(file));
}

/** Volume content with a realistic mix: random, text-like, zero and repeated chunks. */
export function mixedContent(size: number, chunk: number, seed = randomBytes(4).readUInt32LE()): Buffer {
  const buf = Buffer.alloc(size);
  let s = seed || 1;
  const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const repeated = randomBytes(chunk);
  for (let off = 0; off < size; off += chunk) {
    const len = Math.min(chunk, size - off);
    const kind = rnd();
    if (kind < 0.25) continue; // zeros
    if (kind < 0.45) repeated.copy(buf, off, 0, len);
    else if (kind < 0.7) buf.write('the quick brown fox jumps over the lazy dog '.repeat(Math.ceil(len / 44)).slice(0, len), off, 'latin1');
    else randomBytes(len).copy(buf, off);
  }
  return buf;
}

/** Overwrites `count` random chunk-sized blocks of buf with random data; returns their indexes. */
export function mutate(buf: Buffer, chunk: number, count: number): number[] {
  const n = Math.ceil(buf.length / chunk);
  const picked = new Set<number>();
  while (picked.size < Math.min(count, n)) picked.add(Math.floor(Math.random() * n));
  for (const i of picked) {
    const len = Math.min(chunk, buf.length - i * chunk);
    const n = Math.min(4096, len);
    randomBytes(n).copy(buf, i * chunk + Math.floor(Math.random() * (len - n + 1)));
  }
  return [...picked];
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function cli(dataDir: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, '--data-dir', dataDir, ...args], { env: { ...process.env, ...env }, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

export async function cliJson<T = Record<string, unknown>>(dataDir: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<T> {
  const r = await cli(dataDir, ['-f', 'json', ...args], env);
  if (r.code !== 0) throw new Error(`blockgate ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** Every file under dir with its size, for "nothing changed" checks. */
export function treeState(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    if (!fs.existsSync(d)) return;
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(`${path.relative(dir, p)}:${fs.statSync(p).size}`);
    }
  };
  walk(dir);
  return out.sort();
}

export function dirBytes(dir: string): number {
  return treeState(dir).reduce((s, l) => s + Number(l.slice(l.lastIndexOf(':') + 1)), 0);
}
