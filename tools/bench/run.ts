/** Runs a command under GNU time and reports wall seconds and peak RSS. */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface Measured {
  seconds: number;
  rssMiB: number;
  stdout: string;
}

export async function measure(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}, cwd?: string): Promise<Measured> {
  const timeFile = path.join(os.tmpdir(), `bg-bench-time-${process.pid}-${Date.now()}`);
  const start = process.hrtime.bigint();
  const stdout = await new Promise<string>((resolve, reject) => {
    const child = spawn('/usr/bin/time', ['-f', '%M', '-o', timeFile, cmd, ...args], { env: { ...process.env, ...env }, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err.slice(-2000)}`))));
  });
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const rssKiB = Number(fs.readFileSync(timeFile, 'utf8').trim().split('\n').pop());
  fs.rmSync(timeFile, { force: true });
  return { seconds, rssMiB: rssKiB / 1024, stdout };
}

export function sh(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  return measure(cmd, args, env).then((m) => m.stdout);
}

/**
 * Flushes dirty data (so one tool's writeback does not slow the next one's reads) and drops
 * the page cache when allowed, so "first read" numbers mean what they say.
 */
export function dropCaches(): void {
  spawnSync('sync');
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  } catch {
    /* not root or not allowed: figures include the page cache */
  }
}

/** a running process's peak resident set (VmHWM), MiB; 0 if it is gone */
export function peakRssMiB(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

/** flushes dirty data and reads `file` once, so the next measurement reads it from memory */
export function warmCache(file: string): void {
  spawnSync('sync');
  spawnSync('dd', [`if=${file}`, 'of=/dev/null', 'bs=4M', 'status=none']);
}
