/**
 * The appliance daemon (`blockgate serve`, `npm start`): serves every backup (and whatever
 * other export sources are added, such as instant-restore sessions) over NBD on TCP and a
 * unix socket, logs attach and detach, and shuts down cleanly.
 */
import fs from 'node:fs';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import pino from 'pino';
import { NbdServer, type NbdTlsOptions } from '../nbd/server.js';
import type { Appliance } from './appliance.js';
import { NbdAccess } from './exports/access.js';
import { BackupExports } from './exports/backups.js';
import { ExportRegistry } from './exports/registry.js';
import { exportEvents } from './events/emitters.js';
import type { CachedChunkReader } from './read/chunk-reader.js';

export interface ServeOptions {
  host: string;
  port: number;
  /** unix socket path; empty for none */
  socket: string;
  tls?: { cert: string; key: string; ca?: string; required?: boolean };
}

export type Logger = pino.Logger;

/** Serving NBD off loopback without TLS and client certificates: refused at start. */
export class InsecureListenError extends Error {}

/** true when every address `host` names is a loopback one ('' and 0.0.0.0 are every interface) */
export async function isLoopbackHost(host: string): Promise<boolean> {
  const loop = (a: string) => (isIP(a) === 4 ? a.startsWith('127.') : a === '::1' || /^::ffff:127\./i.test(a));
  if (!host) return false;
  if (isIP(host)) return loop(host);
  try {
    const all = await lookup(host, { all: true });
    return all.length > 0 && all.every((a) => loop(a.address));
  } catch {
    return false;
  }
}

export function makeLogger(level: string = 'info'): Logger {
  return pino({ base: undefined, level }, pino.destination(2));
}

export class Daemon {
  readonly registry: ExportRegistry;
  readonly backups: BackupExports;
  readonly chunks: CachedChunkReader;
  private readonly server: NbdServer;
  /** who sees what; set at start, once the listener's address is known */
  private access: NbdAccess = new NbdAccess([], false);
  port = 0;
  private stopped = false;
  private readonly cleanups: (() => Promise<void> | void)[] = [];

  constructor(readonly app: Appliance, readonly opts: ServeOptions, readonly log: Logger) {
    this.chunks = app.chunks;
    this.registry = new ExportRegistry(exportEvents(app.events, (event, fields) => log.info({ event, ...fields }, event)));
    this.backups = new BackupExports(app, this.chunks);
    this.registry.addSource(this.backups);
    this.backups.onSaved = (id, name, error) =>
      error ? log.error({ event: 'overlay-save-failed', name, error: error.message }, `saving overlay as ${name} failed: ${error.message}`) : log.info({ event: 'overlay-saved', backup: id, name }, `overlay saved as backup ${name}`);
    let tls: NbdTlsOptions | undefined;
    if (opts.tls) {
      tls = {
        cert: fs.readFileSync(opts.tls.cert),
        key: fs.readFileSync(opts.tls.key),
        ...(opts.tls.ca ? { ca: fs.readFileSync(opts.tls.ca) } : {}),
        required: opts.tls.required,
        // the unix socket is 0600, the admin's: TLS stays optional there
        requiredOnUnix: false,
      };
    }
    const nbd = app.config.nbd;
    this.server = new NbdServer({
      provider: this.registry,
      tls,
      access: (name, client) => this.access.decide(name, client),
      maxConnections: nbd.maxConnections,
      maxInFlight: nbd.maxInFlightRequests,
      maxRequestBytes: Math.min(32 * 1024 * 1024, nbd.maxInFlightBytes),
      maxInFlightBytes: nbd.maxInFlightBytes,
      maxTotalInFlightBytes: nbd.maxTotalInFlightBytes,
      log: (event, fields) => {
        if (event === 'error' || event === 'protocol-error' || event === 'connection-refused') log.warn({ event, ...fields }, event);
        else log.debug({ event, ...fields }, event);
      },
    });
  }

  /** registers something to undo at stop (sessions, mounts) */
  onStop(fn: () => Promise<void> | void): void {
    this.cleanups.push(fn);
  }

  /**
   * Refuses (InsecureListenError) to listen off loopback without TLS and verified client
   * certificates, and sets up the access rules. `start` runs it; callers may run it earlier,
   * before anything else is set up.
   */
  async preflight(): Promise<boolean> {
    const loopback = await isLoopbackHost(this.opts.host);
    const tls = this.opts.tls;
    if (!loopback && !(tls && tls.ca && tls.required)) {
      const missing = [!tls && '--tls-cert/--tls-key', !tls?.ca && '--tls-ca (to verify client certificates)', !tls?.required && '--tls-required'].filter(Boolean).join(', ');
      throw new InsecureListenError(
        `refusing to serve NBD on ${JSON.stringify(this.opts.host || '*')}: it is not a loopback address, and every backup would be readable (and overlays writable) by anyone who reaches it. ` +
          `Off loopback blockgate needs TLS with client certificates: give ${missing} (or nbd.tls in blockgate.json), and map client identities to exports in nbd.access; or listen on 127.0.0.1.`,
      );
    }
    this.access = new NbdAccess(this.app.config.nbd.access, loopback);
    if (!loopback && this.access.ruleCount === 0) {
      this.log.warn({ event: 'nbd-no-access-rules' }, `no nbd.access rules in blockgate.json: clients on ${this.opts.host || '*'} see no export (the unix socket still serves every export)`);
    }
    return loopback;
  }

  async start(): Promise<void> {
    const loopback = await this.preflight();
    this.port = await this.server.listenTcp(this.opts.port, this.opts.host);
    if (this.opts.socket) {
      // a longer path would be cut short by bind(2), silently serving somewhere else
      if (Buffer.byteLength(this.opts.socket) > 107) throw new Error(`the NBD socket path ${this.opts.socket} is too long for a unix socket (${Buffer.byteLength(this.opts.socket)} bytes, at most 107): give a shorter one with --nbd-socket, or --nbd-socket '' for none`);
      await this.server.listenUnix(this.opts.socket);
      // every export (and +overlay, writable) is served there: only the appliance's user may connect
      fs.chmodSync(this.opts.socket, 0o600);
    }
    this.log.info({ event: 'listening', host: this.opts.host, port: this.port, socket: this.opts.socket || null, tls: !!this.opts.tls, access: loopback ? 'admin' : `${this.access.ruleCount} rules`, maxConnections: this.app.config.nbd.maxConnections }, `serving NBD on ${this.opts.host}:${this.port}${this.opts.socket ? ` and ${this.opts.socket}` : ''}`);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.log.info({ event: 'stopping' }, 'stopping');
    await this.server.close();
    for (const fn of this.cleanups.reverse()) await fn();
    await this.backups.closeAll();
    if (this.opts.socket) fs.rmSync(this.opts.socket, { force: true });
  }
}

export function nbdUris(host: string, port: number, socket: string, name: string): { tcp: string; unix: string | null } {
  const enc = [...name].map((c) => (/[A-Za-z0-9._~@+:=-]/.test(c) ? c : encodeURIComponent(c))).join('');
  return { tcp: `nbd://${host}${port === 10809 ? '' : `:${port}`}/${enc}`, unix: socket ? `nbd+unix:///${enc}?socket=${socket}` : null };
}
