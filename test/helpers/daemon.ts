/** Starts `blockgate serve` as a child process on a free port and a unix socket; stops it on teardown. */
import path from 'node:path';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { createInterface } from 'node:readline';
import type { ExecutionContext } from 'ava';
import { CLI } from './core.js';

export const run = promisify(execFile);

export interface RunningDaemon {
  child: ChildProcess;
  port: number;
  socket: string;
  log: string[];
  uri(name: string): string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * Collects the daemon's stderr lines into `log` and resolves with the port of its
 * "listening" JSON line; rejects if it exits first or is silent for `timeoutMs`.
 */
export function waitListening(child: ChildProcess, log: string[], timeoutMs = 20000): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`daemon did not start:\n${log.join('\n')}`)), timeoutMs);
    createInterface({ input: child.stderr! }).on('line', (line) => {
      log.push(line);
      try {
        const j = JSON.parse(line) as { event?: string; port?: number };
        if (j.event === 'listening') {
          clearTimeout(timer);
          resolve(j.port!);
        }
      } catch {
        /* not JSON */
      }
    });
    child.on('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`daemon exited (${code ?? sig}):\n${log.join('\n')}`));
    });
  });
}

export async function startDaemon(t: ExecutionContext, dataDir: string, extra: string[] = []): Promise<RunningDaemon> {
  const socket = path.join(dataDir, `nbd-${process.pid}.sock`);
  const child = spawn(process.execPath, [CLI, '--data-dir', dataDir, 'serve', '--nbd-port', '0', '--nbd-socket', socket, ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
  const log: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const kill = (signal: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    return exited;
  };
  // torn down even when it never says it listens (no orphan daemon after a failed start)
  t.teardown(() => kill('SIGKILL'));
  // a bound on a start that hangs, generous for a loaded machine (not a timing assertion)
  const port = await waitListening(child, log, 60_000);
  const d: RunningDaemon = {
    child,
    port,
    socket,
    log,
    uri: (name) => `nbd://127.0.0.1:${port}/${name}`,
    stop: async (signal = 'SIGTERM') => kill(signal),
  };
  return d;
}
