/**
 * NbdServer: listens on TCP and/or unix sockets and serves the exports of an ExportProvider
 * over the NBD protocol (fixed newstyle, structured replies, base:allocation, STARTTLS).
 */
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { createSecureContext } from 'node:tls';
import { Connection } from './connection.js';
import type { ClientInfo, ExportProvider, NbdServerOptions, ServerContext } from './types.js';

export type { ClientInfo, ExportAccess, ExportInfo, ExportProvider, NbdLog, NbdServerOptions, NbdTlsOptions } from './types.js';

const DEFAULT_MAX_REQUEST = 32 * 1024 * 1024;
const MAX_MAX_REQUEST = 256 * 1024 * 1024;
const DEFAULT_INFLIGHT_BYTES = 32 * 1024 * 1024;
const DEFAULT_TOTAL_INFLIGHT_BYTES = 256 * 1024 * 1024;
/** how long close() waits for in-flight requests before it drops connections */
const CLOSE_TIMEOUT_MS = 10000;

export class NbdServer {
  private readonly ctx: ServerContext;
  private readonly listeners: Server[] = [];
  private readonly conns = new Set<Connection>();
  private closing: Promise<void> | null = null;

  constructor(opts: NbdServerOptions) {
    if (!opts || !opts.provider || typeof opts.provider.open !== 'function' || typeof opts.provider.list !== 'function') {
      throw new TypeError('NbdServer needs a provider with list() and open()');
    }
    const maxRequestBytes = opts.maxRequestBytes ?? DEFAULT_MAX_REQUEST;
    if (!Number.isInteger(maxRequestBytes) || maxRequestBytes < 4096 || maxRequestBytes > MAX_MAX_REQUEST) {
      throw new RangeError(`maxRequestBytes must be an integer between 4096 and ${MAX_MAX_REQUEST}`);
    }
    const maxInFlight = opts.maxInFlight ?? 64;
    if (!Number.isInteger(maxInFlight) || maxInFlight < 1 || maxInFlight > 1024) throw new RangeError('maxInFlight must be between 1 and 1024');
    const maxInFlightBytes = opts.maxInFlightBytes ?? DEFAULT_INFLIGHT_BYTES;
    if (!Number.isInteger(maxInFlightBytes) || maxInFlightBytes < maxRequestBytes) throw new RangeError(`maxInFlightBytes must be an integer of at least maxRequestBytes (${maxRequestBytes})`);
    const maxTotal = opts.maxTotalInFlightBytes ?? Math.max(DEFAULT_TOTAL_INFLIGHT_BYTES, maxInFlightBytes);
    if (!Number.isInteger(maxTotal) || maxTotal < maxInFlightBytes) throw new RangeError(`maxTotalInFlightBytes must be an integer of at least maxInFlightBytes (${maxInFlightBytes})`);
    const maxConnections = opts.maxConnections ?? 256;
    if (!Number.isInteger(maxConnections) || maxConnections < 1 || maxConnections > 65536) throw new RangeError('maxConnections must be between 1 and 65536');
    if (opts.access !== undefined && typeof opts.access !== 'function') throw new TypeError('access must be a function');
    let tls: ServerContext['tls'] = null;
    if (opts.tls) {
      const { key, cert, ca } = opts.tls;
      tls = {
        context: createSecureContext({ key, cert, ...(ca !== undefined ? { ca } : {}) }),
        required: opts.tls.required ?? false,
        requiredOnUnix: opts.tls.requiredOnUnix ?? true,
        verifyPeer: opts.tls.verifyPeer ?? ca !== undefined,
      };
    }
    const userLog = opts.log;
    const log = userLog
      ? (event: string, fields: Record<string, unknown>) => {
          try {
            userLog(event, fields);
          } catch {
            // a failing logger must never take the server down
          }
        }
      : () => {};
    this.ctx = {
      provider: opts.provider as ExportProvider,
      defaultExport: opts.defaultExport,
      maxRequestBytes,
      maxInFlight,
      maxInFlightBytes,
      maxConnections,
      budget: { used: 0, max: maxTotal, waiters: new Set() },
      access: opts.access ?? (() => 'write'),
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? 60000,
      tls,
      log,
      shuttingDown: false,
    };
  }

  /** Listens on TCP; port 0 picks a free port. Resolves with the port actually bound. */
  async listenTcp(port: number, host?: string): Promise<number> {
    const listener: ClientInfo['listener'] = { transport: 'tcp', host: host ?? '', port };
    const srv = this.makeServer(listener);
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen({ port, host }, () => {
        srv.off('error', reject);
        resolve();
      });
    });
    const addr = srv.address();
    const bound = typeof addr === 'object' && addr ? addr.port : port;
    listener.port = bound;
    this.ctx.log('listen', { transport: 'tcp', host: host ?? '*', port: bound });
    return bound;
  }

  /** Listens on a unix socket; a stale socket file nobody answers on is replaced. */
  async listenUnix(path: string): Promise<void> {
    if (existsSync(path)) {
      if (!lstatSync(path).isSocket()) throw new Error(`${path} exists and is not a socket`);
      if (await answers(path)) throw new Error(`${path} is in use by another server`);
      unlinkSync(path);
    }
    const srv = this.makeServer({ transport: 'unix', path });
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen({ path }, () => {
        srv.off('error', reject);
        resolve();
      });
    });
    this.ctx.log('listen', { transport: 'unix', path });
  }

  /** Stops listening and ends every connection (in-flight requests are answered first). */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  /** open client connections */
  connections(): number {
    return this.conns.size;
  }

  private async doClose(): Promise<void> {
    this.ctx.shuttingDown = true;
    const stopped = this.listeners.map((l) => new Promise<void>((r) => l.close(() => r())));
    const conns = [...this.conns];
    for (const c of conns) c.shutdown();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(conns.map((c) => c.done)),
      new Promise<void>((r) => {
        timer = setTimeout(r, CLOSE_TIMEOUT_MS);
        timer.unref();
      }),
    ]);
    clearTimeout(timer);
    await Promise.all(stopped);
    this.ctx.log('closed', {});
  }

  private makeServer(listener: ClientInfo['listener']): Server {
    if (this.ctx.shuttingDown) throw new Error('server is closed');
    const srv = createServer({ noDelay: true }, (sock) => this.accept(sock, listener));
    srv.on('error', (e) => this.ctx.log('listener-error', { error: e.message }));
    this.listeners.push(srv);
    return srv;
  }

  private accept(sock: Socket, listener: ClientInfo['listener']): void {
    if (this.ctx.shuttingDown) {
      sock.destroy();
      return;
    }
    const peer = sock.remoteAddress ? `${sock.remoteAddress}:${sock.remotePort}` : 'unix';
    if (this.conns.size >= (this.ctx.maxConnections ?? Infinity)) {
      // refused before a byte is sent: the client sees the connection closed instead of a greeting
      this.ctx.log('connection-refused', { peer, reason: `connection limit of ${this.ctx.maxConnections} reached`, connections: this.conns.size });
      sock.on('error', () => {});
      sock.destroy();
      return;
    }
    let conn: Connection;
    try {
      conn = new Connection(sock, this.ctx, peer, listener);
    } catch (e) {
      this.ctx.log('connection-error', { peer, error: e instanceof Error ? e.message : String(e) });
      sock.destroy();
      return;
    }
    this.conns.add(conn);
    this.ctx.log('connect', { conn: conn.id, peer });
    void conn.done.finally(() => this.conns.delete(conn));
  }
}

function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ path });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
