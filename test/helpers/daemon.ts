/** Starts `blockgate serve` as a child process on a free port and a unix socket; stops it on teardown. */
import path from 'node:path';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
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

export async function startDaemon(t: ExecutionContext, dataDir: string, extra: string[] = []): Promise<RunningDaemon> {
  const socket = path.join(dataDir, `nbd-${process.pid}.sock`);
  const child = spawn(process.execPath, [CLI, '--data-dir', dataDir, 'serve', '--nbd-port', '0', '--nbd-socket', socket, ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
  const log: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const port = await new Promise<number>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`daemon did not start: ${log.join('\n')}`)), 15000);
    child.stderr!.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
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
      }
    });
    child.on('exit', (code) => reject(new Error(`daemon exited ${code}: ${log.join('\n')}`)));
  });
  const d: RunningDaemon = {
    child,
    port,
    socket,
    log,
    uri: (name) => `nbd://127.0.0.1:${port}/${name}`,
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
  t.teardown(() => d.stop('SIGKILL'));
  return d;
}
