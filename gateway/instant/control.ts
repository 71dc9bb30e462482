/**
 * The control path between the CLI and the daemon that owns the sessions: a small HTTP/JSON
 * API on a unix socket (0600) in the data directory (so only who can read the data directory
 * can use it). When the data dir's path is too long for a unix socket, the daemon listens in
 * a private directory it makes with mkdtemp (0700) and names it in the data dir
 * (control.sock.path, 0600, written exclusively and renamed into place); a client trusts
 * that directory only if it is a real 0700 directory of the data dir's owner. Never a
 * predictable name in /tmp. No daemon answering there means no daemon runs for that data
 * directory.
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
import { ConflictError, NotFoundError } from '../../catalog/catalog.js';
import { InvalidNameError } from '../names.js';

const SOCKET = 'control.sock';
/** names the private socket directory when the data dir's path is too long for a socket */
export const SOCKET_POINTER = 'control.sock.path';
const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;

function fitsSocket(p: string): boolean {
  return Buffer.byteLength(p) <= 100;
}

/** the pointed-to socket, if the pointer is there and names a private directory of the data dir's owner */
function pointedSocket(dir: string): string | null {
  let text: string;
  try {
    const fd = fs.openSync(path.join(dir, SOCKET_POINTER), O_RDONLY | O_NOFOLLOW);
    try {
      text = fs.readFileSync(fd, 'utf8').trim();
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return null;
  }
  const sock = text;
  if (!path.isAbsolute(sock) || path.basename(sock) !== SOCKET || !fitsSocket(sock)) return null;
  try {
    const owner = fs.statSync(dir).uid;
    const st = fs.lstatSync(path.dirname(sock));
    if (!st.isDirectory() || st.uid !== owner || (st.mode & 0o077) !== 0) return null;
  } catch {
    return null;
  }
  return sock;
}

/**
 * The socket path: in the data dir, or, when that path is too long for a unix socket, the
 * one the running daemon named in the data dir (null when there is none to trust).
 */
export function controlSocketPath(dataDir: string): string | null {
  const dir = path.resolve(dataDir);
  const p = path.join(dir, SOCKET);
  if (fitsSocket(p)) return p;
  return pointedSocket(dir);
}

function writePointer(dir: string, sock: string): void {
  const file = path.join(dir, SOCKET_POINTER);
  const tmp = `${file}.${process.pid}.tmp`;
  fs.rmSync(tmp, { force: true });
  const fd = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
  try {
    fs.writeFileSync(fd, sock + '\n');
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
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
  if (e instanceof BadRequestError || e instanceof InvalidNameError || e instanceof RangeError || e instanceof TypeError) return 'usage';
  return 'error';
}

export type Handler = (method: string, parts: string[], body: Record<string, unknown>) => Promise<unknown>;

export class ControlServer {
  private constructor(
    private readonly server: http.Server,
    readonly path: string,
    /** the data dir whose pointer names this socket's private directory (long data dir paths) */
    private readonly pointerOf?: string,
  ) {}

  /** listens on the data dir's control socket; null if another live daemon already answers there */
  static async listen(dataDir: string, handler: Handler): Promise<ControlServer | null> {
    const dir = path.resolve(dataDir);
    const existing = controlSocketPath(dir);
    if (existing && fs.existsSync(existing)) {
      if (await answers(existing)) return null;
      fs.rmSync(existing, { force: true });
      if (path.dirname(existing) !== dir) fs.rmSync(path.dirname(existing), { recursive: true, force: true });
    }
    let sock = path.join(dir, SOCKET);
    let pointerOf: string | undefined;
    if (!fitsSocket(sock)) {
      // a private directory nobody else can have made or can enter; named in the data dir
      sock = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-ctl-')), SOCKET);
      pointerOf = dir;
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
    if (pointerOf) writePointer(pointerOf, sock);
    return new ControlServer(server, sock, pointerOf);
  }

  async close(): Promise<void> {
    await new Promise<void>((r) => this.server.close(() => r()));
    this.server.closeAllConnections?.();
    fs.rmSync(this.path, { force: true });
    if (this.pointerOf) {
      if (pointedSocket(this.pointerOf) === this.path) fs.rmSync(path.join(this.pointerOf, SOCKET_POINTER), { force: true });
      fs.rmSync(path.dirname(this.path), { recursive: true, force: true });
    }
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
  if (!sock) return Promise.reject(new NoDaemonError(dataDir));
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
