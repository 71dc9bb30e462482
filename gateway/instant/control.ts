/**
 * The control path between the CLI and the daemon that owns the sessions: a small HTTP/JSON
 * API on a unix socket in the data directory (so only who can read the data directory can
 * use it). No daemon answering there means no daemon runs for that data directory.
 *
 *   POST /restores                 {backup, volume?, name?, detachOnComplete?, concurrency?, rate?}
 *   GET  /restores                 every session with its progress
 *   GET  /restores/<ref>
 *   POST /restores/<ref>/cancel | /detach | /throttle {rate?, concurrency?}
 *   GET  /ping                     {pid, dataDir}
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { ConflictError, NotFoundError } from '../../catalog/catalog.js';

/** the socket path; a short one under the temp dir when the data dir's would be too long for a unix socket */
export function controlSocketPath(dataDir: string): string {
  const dir = path.resolve(dataDir);
  const p = path.join(dir, 'control.sock');
  if (Buffer.byteLength(p) <= 100) return p;
  return path.join(os.tmpdir(), `blockgate-${createHash('sha256').update(dir).digest('hex').slice(0, 16)}.sock`);
}

export class NoDaemonError extends Error {
  constructor(dataDir: string) {
    super(`no blockgate daemon is running for ${path.resolve(dataDir)}; start it with blockgate serve`);
    this.name = 'NoDaemonError';
  }
}

export class BadRequestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BadRequestError';
  }
}

type Kind = 'usage' | 'notfound' | 'conflict' | 'error';
const STATUS: Record<Kind, number> = { usage: 400, notfound: 404, conflict: 409, error: 500 };

function kindOf(e: unknown): Kind {
  if (e instanceof NotFoundError) return 'notfound';
  if (e instanceof ConflictError) return 'conflict';
  if (e instanceof BadRequestError || e instanceof RangeError || e instanceof TypeError) return 'usage';
  return 'error';
}

export type Handler = (method: string, parts: string[], body: Record<string, unknown>) => Promise<unknown>;

export class ControlServer {
  private constructor(private readonly server: http.Server, readonly path: string) {}

  /** listens on the data dir's control socket; null if another live daemon already answers there */
  static async listen(dataDir: string, handler: Handler): Promise<ControlServer | null> {
    const sock = controlSocketPath(dataDir);
    if (fs.existsSync(sock)) {
      if (await answers(sock)) return null;
      fs.rmSync(sock, { force: true });
    }
    const server = http.createServer((req, res) => {
      let raw = '';
      req.setEncoding('utf8');
      req.on('data', (d: string) => {
        raw += d;
        if (raw.length > 1024 * 1024) req.destroy();
      });
      req.on('end', () => {
        void (async () => {
          try {
            const body = raw ? (JSON.parse(raw) as Record<string, unknown>) : {};
            if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new BadRequestError('the request body must be a JSON object');
            const url = new URL(req.url ?? '/', 'http://blockgate');
            const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
            const out = await handler(req.method ?? 'GET', parts, body);
            res.writeHead(200, { 'content-type': 'application/json' });
            res.end(JSON.stringify(out));
          } catch (e) {
            const kind = e instanceof SyntaxError ? 'usage' : kindOf(e);
            res.writeHead(STATUS[kind], { 'content-type': 'application/json' });
            res.end(JSON.stringify({ error: e instanceof Error ? e.message : String(e), kind }));
          }
        })();
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(sock, () => {
        server.off('error', reject);
        resolve();
      });
    });
    fs.chmodSync(sock, 0o600);
    return new ControlServer(server, sock);
  }

  async close(): Promise<void> {
    await new Promise<void>((r) => this.server.close(() => r()));
    this.server.closeAllConnections?.();
    fs.rmSync(this.path, { force: true });
  }
}

function answers(sock: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.request({ socketPath: sock, path: '/ping', method: 'GET', timeout: 2000 }, (res) => {
      res.resume();
      resolve(true);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}

/** One request to the daemon of dataDir; its errors come back as the same kinds (exit codes). */
export function controlRequest<T>(dataDir: string, method: 'GET' | 'POST', route: string, body?: Record<string, unknown>, timeoutMs = 30000): Promise<T> {
  const sock = controlSocketPath(dataDir);
  return new Promise<T>((resolve, reject) => {
    const payload = body ? JSON.stringify(body) : '';
    const req = http.request(
      { socketPath: sock, path: route, method, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }, timeout: timeoutMs },
      (res) => {
        let raw = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (raw += d));
        res.on('end', () => {
          let j: unknown;
          try {
            j = JSON.parse(raw);
          } catch {
            reject(new Error(`the daemon answered something that is not JSON (HTTP ${res.statusCode})`));
            return;
          }
          if (res.statusCode === 200) {
            resolve(j as T);
            return;
          }
          const { error, kind } = j as { error: string; kind: Kind };
          if (kind === 'notfound') reject(Object.assign(new NotFoundError('x', 'x'), { message: error }));
          else if (kind === 'conflict') reject(new ConflictError(error));
          else if (kind === 'usage') reject(new BadRequestError(error));
          else reject(new Error(error));
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`the daemon did not answer within ${timeoutMs / 1000} s`)));
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED' || e.code === 'ENOTSOCK') reject(new NoDaemonError(dataDir));
      else reject(e);
    });
    req.end(payload);
  });
}
