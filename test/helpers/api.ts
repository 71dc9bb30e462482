/**
 * The appliance service for tests: `blockgate serve` with the Cinder API on a free port, the
 * real `cinder` and `openstack` clients against it (their tables parsed), and raw HTTP for
 * what the clients never send (bad input).
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { ExecutionContext } from 'ava';
import { CLI } from './core.js';

export interface ApiDaemon {
  child: ChildProcess;
  port: number;
  nbdPort: number;
  url: string;
  log: string[];
  dataDir: string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export async function startApi(t: ExecutionContext, dataDir: string, extra: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<ApiDaemon> {
  const socket = path.join(dataDir, `nbd-${process.pid}-${Math.random().toString(36).slice(2, 6)}.sock`);
  const child = spawn(process.execPath, [CLI, '--data-dir', dataDir, 'serve', '--nbd-port', '0', '--nbd-socket', socket, '--api-port', '0', ...extra], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  const log: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const { port, nbdPort } = await new Promise<{ port: number; nbdPort: number }>((resolve, reject) => {
    let nbdPort = 0;
    const timer = setTimeout(() => reject(new Error(`the daemon did not start:\n${log.join('\n')}`)), 60_000);
    createInterface({ input: child.stderr! }).on('line', (line) => {
      log.push(line);
      try {
        const j = JSON.parse(line) as { event?: string; port?: number };
        if (j.event === 'listening') nbdPort = j.port!;
        if (j.event === 'api-listening') {
          clearTimeout(timer);
          resolve({ port: j.port!, nbdPort });
        }
      } catch {
        /* not JSON */
      }
    });
    child.on('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`the daemon exited (${code ?? sig}):\n${log.join('\n')}`));
    });
  });
  const d: ApiDaemon = {
    child,
    port,
    nbdPort,
    url: `http://127.0.0.1:${port}`,
    log,
    dataDir,
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
  t.teardown(() => d.stop('SIGKILL'));
  return d;
}

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env, maxBuffer: 16 * 1024 * 1024, timeout: 120_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** a private HOME for the clients' caches (G13) */
function clientEnv(d: ApiDaemon): NodeJS.ProcessEnv {
  const home = path.join(d.dataDir, '..', 'client-home');
  fs.mkdirSync(home, { recursive: true });
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: home, CINDERCLIENT_UUID_CACHE_DIR: path.join(home, 'cache') };
  for (const k of Object.keys(env)) if (k.startsWith('OS_') || k === 'CINDER_ENDPOINT') delete env[k];
  return env;
}

/** `cinder --os-auth-type noauth --os-user-id USER --os-project-id PROJECT --os-endpoint URL/v3 ...` */
export function cinder(d: ApiDaemon, user: string, project: string, args: string[], opts: { version?: string; endpoint?: string } = {}): Promise<Run> {
  return run('cinder', ['--os-auth-type', 'noauth', '--os-user-id', user, '--os-project-id', project, '--os-endpoint', opts.endpoint ?? `${d.url}/v3`, ...(opts.version ? ['--os-volume-api-version', opts.version] : []), ...args], clientEnv(d));
}

/** `openstack --os-auth-type none --os-endpoint URL/v3 ...` (the local admin) */
export function openstack(d: ApiDaemon, args: string[], opts: { endpoint?: string; version?: string } = {}): Promise<Run> {
  return run('openstack', ['--os-auth-type', 'none', '--os-endpoint', opts.endpoint ?? `${d.url}/v3`, ...(opts.version ? ['--os-volume-api-version', opts.version] : []), ...args], clientEnv(d));
}

/** cinder's `| Property | Value |` table as an object */
export function props(out: string): Record<string, string> {
  const rows = tableRows(out);
  const o: Record<string, string> = {};
  for (const r of rows.slice(1)) if (r.length >= 2) o[r[0]!] = r[1]!;
  return o;
}

/** a cinder list table as objects keyed by its header */
export function listTable(out: string): Record<string, string>[] {
  const rows = tableRows(out);
  const head = rows[0] ?? [];
  return rows.slice(1).map((r) => Object.fromEntries(head.map((h, i) => [h, r[i] ?? ''])));
}

function tableRows(out: string): string[][] {
  return out
    .split('\n')
    .filter((l) => l.startsWith('|'))
    .map((l) =>
      l
        .slice(1, -1)
        .split('|')
        .map((c) => c.trim()),
    );
}

export async function ok(r: Promise<Run> | Run, what = 'command'): Promise<string> {
  const x = await r;
  if (x.code !== 0) throw new Error(`${what} failed (${x.code}): ${x.stderr}${x.stdout}`);
  return x.stdout;
}

/** raw HTTP against the API (bad input; what no client sends) */
export async function http(d: ApiDaemon, method: string, route: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: unknown; text: string }> {
  const res = await fetch(`${d.url}${route}`, {
    method,
    headers: { 'x-user-id': 'admin', 'x-project-id': 'p1', ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON */
  }
  return { status: res.status, json, text };
}

/** polls `probe` until it returns a value (not undefined), or fails after timeoutMs */
export async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 120_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** the backup's status, as the admin sees it */
export async function backupStatus(d: ApiDaemon, id: string): Promise<string> {
  const r = await http(d, 'GET', `/v3/backups/${id}`);
  return ((r.json as { backup?: { status: string } }).backup?.status ?? `HTTP ${r.status}`) as string;
}

export async function volumeStatus(d: ApiDaemon, id: string): Promise<string> {
  const r = await http(d, 'GET', `/v3/volumes/${id}`);
  return ((r.json as { volume?: { status: string } }).volume?.status ?? `HTTP ${r.status}`) as string;
}

export async function waitBackup(d: ApiDaemon, id: string, want: string[] = ['available', 'error']): Promise<string> {
  return until(`backup ${id} to become ${want.join('|')}`, async () => {
    const s = await backupStatus(d, id);
    return want.includes(s) ? s : undefined;
  });
}

export async function waitVolume(d: ApiDaemon, id: string, want: string[] = ['available', 'error_restoring', 'error']): Promise<string> {
  return until(`volume ${id} to become ${want.join('|')}`, async () => {
    const s = await volumeStatus(d, id);
    return want.includes(s) ? s : undefined;
  });
}
