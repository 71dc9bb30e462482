/**
 * One client connection: handshake (with optional STARTTLS upgrade), then transmission,
 * then teardown. Nothing a client sends can throw out of here: every failure ends this
 * connection only, after in-flight device calls have settled and the export was released.
 */
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { negotiate, release, type HandshakeIo, type Negotiated } from './handshake.js';
import { EofError, SocketReader } from './reader.js';
import { messageOf } from './protocol.js';
import { Transmission, type EndReason, type TransmissionIo } from './transmission.js';
import type { ClientInfo, ServerContext } from './types.js';

/** after we end a socket, the peer gets this long to close its side */
const CLOSE_GRACE_MS = 2000;
/** TLS handshake must complete within this time */
const TLS_HANDSHAKE_MS = 15000;

let nextId = 1;
const EMPTY = Buffer.alloc(0);

export class Connection implements HandshakeIo, TransmissionIo {
  readonly id = nextId++;
  readonly done: Promise<void>;
  reader: SocketReader;
  isTls = false;
  private socket: Socket | TLSSocket;
  private transmission: Transmission | null = null;
  private stopping = false;
  private closed: Promise<void>;
  private certificate: ClientInfo['certificate'];

  constructor(
    private readonly raw: Socket,
    private readonly ctx: ServerContext,
    private readonly peer: string,
    private readonly listener: ClientInfo['listener'] = { transport: 'tcp', host: '', port: 0 },
  ) {
    raw.setNoDelay(true);
    raw.on('error', () => {}); // surfaced through the reader; never let it become uncaught
    this.socket = raw;
    this.reader = new SocketReader(raw);
    this.closed = new Promise((resolve) => raw.once('close', () => resolve()));
    this.done = this.run();
  }

  log(event: string, fields: Record<string, unknown> = {}): void {
    try {
      this.ctx.log(event, { conn: this.id, peer: this.peer, ...fields });
    } catch {
      // a failing logger must not take the connection down
    }
  }

  get writableLength(): number {
    return this.socket.writableLength;
  }

  send(buf: Buffer): void {
    this.sendv([buf]);
  }

  sendv(bufs: Buffer[]): boolean {
    const s = this.socket;
    if (s.destroyed || !s.writable) return false;
    if (bufs.length === 1) return s.write(bufs[0]!);
    s.cork();
    for (const b of bufs) s.write(b);
    s.uncork();
    return true;
  }

  /** who the client is: its listener, address and (after TLS) verified certificate */
  get client(): ClientInfo {
    return { listener: this.listener, peer: this.peer, tls: this.isTls, ...(this.certificate ? { certificate: this.certificate } : {}) };
  }

  /** cb runs once everything written so far left for the kernel (or the socket is gone) */
  afterFlush(cb: () => void): void {
    const s = this.socket;
    if (s.destroyed || !s.writable || s.writableLength === 0) {
      cb();
      return;
    }
    let called = false;
    s.write(EMPTY, () => {
      if (!called) {
        called = true;
        cb();
      }
    });
  }

  onDrain(cb: () => void): void {
    this.socket.on('drain', cb);
  }

  async startTls(ack: Buffer): Promise<void> {
    const tls = this.ctx.tls!;
    const leftover = this.reader.detach();
    if (leftover.length > 0) throw new Error('client sent data before the STARTTLS reply');
    this.raw.pause();
    await new Promise<void>((resolve, reject) => this.raw.write(ack, (e) => (e ? reject(e) : resolve())));
    const sock = new TLSSocket(this.raw, {
      isServer: true,
      secureContext: tls.context,
      requestCert: tls.verifyPeer,
      rejectUnauthorized: tls.verifyPeer,
    });
    sock.on('error', () => {});
    this.socket = sock;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error('TLS handshake timed out')), TLS_HANDSHAKE_MS);
      const fail = (e: Error) => {
        clearTimeout(timer);
        sock.off('secure', ok);
        reject(e);
      };
      const ok = () => {
        clearTimeout(timer);
        sock.off('error', fail);
        sock.off('close', closed);
        resolve();
      };
      const closed = () => fail(new Error('connection closed during the TLS handshake'));
      sock.once('secure', ok);
      sock.once('error', fail);
      sock.once('close', closed);
    });
    if (tls.verifyPeer) {
      // a standalone server TLSSocket does not check the client certificate itself
      const handle = (sock as unknown as { _handle?: { verifyError?: () => Error | null } })._handle;
      const err = handle?.verifyError?.();
      if (err || !sock.getPeerCertificate()?.raw) throw new Error(`client certificate rejected: ${err ? err.message : 'none presented'}`);
      const x509 = sock.getPeerX509Certificate();
      if (x509) this.certificate = { subject: parseSubject(x509.subject), fingerprint256: x509.fingerprint256 };
    }
    this.reader = new SocketReader(sock);
    this.isTls = true;
    this.log('tls', { protocol: sock.getProtocol(), cipher: sock.getCipher()?.name, ...(this.certificate ? { subject: this.certificate.subject.map(([k, v]) => `${k}=${v}`).join(',') } : {}) });
  }

  /** Server shutdown: finish in-flight requests, then close. */
  shutdown(): void {
    if (this.stopping) return;
    this.stopping = true;
    const t = this.transmission;
    if (!t) {
      this.socket.destroy();
      return;
    }
    t.stop();
    void t.idle().then(() => this.endSocket());
  }

  /** Ends the socket after pending replies are flushed; destroys it if the peer lingers. */
  private endSocket(): void {
    const s = this.socket;
    if (s.destroyed) return;
    s.end();
    const timer = setTimeout(() => {
      s.destroy();
      this.raw.destroy();
    }, CLOSE_GRACE_MS);
    timer.unref();
  }

  private destroySocket(): void {
    this.socket.destroy();
    this.raw.destroy();
  }

  private async run(): Promise<void> {
    let chosen: Negotiated | null = null;
    let reason: EndReason | 'handshake-end' | 'error' = 'handshake-end';
    const timer = setTimeout(() => {
      this.log('handshake-timeout', {});
      this.destroySocket();
    }, this.ctx.handshakeTimeoutMs);
    timer.unref();
    try {
      chosen = await negotiate(this, this.ctx);
      clearTimeout(timer);
      if (chosen) {
        this.log('export-open', {
          export: chosen.name,
          size: chosen.caps.size,
          flags: chosen.caps.flags,
          structured: chosen.structured,
          metaContext: chosen.metaContextId !== 0,
          tls: this.isTls,
        });
        this.transmission = new Transmission(this, this.ctx, chosen);
        if (this.stopping) this.transmission.stop();
        reason = await this.transmission.run();
      }
    } catch (e) {
      reason = 'error';
      if (e instanceof EofError && e.partial === 0) this.log('handshake-eof', {});
      else this.log('connection-error', { phase: chosen ? 'transmission' : 'handshake', error: messageOf(e) });
    } finally {
      clearTimeout(timer);
      if (this.transmission) await this.transmission.idle();
      if (reason === 'protocol-error' || reason === 'io-error' || reason === 'error') this.destroySocket();
      else this.endSocket();
      if (chosen) {
        this.log('disconnect', { export: chosen.name, reason });
        await release(this.ctx, chosen.name, chosen.device);
      }
      await this.closed;
    }
  }
}

/** node's X509Certificate.subject: one `KEY=value` per line, in certificate order */
export function parseSubject(subject: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const line of subject.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) out.push([line.slice(0, eq), line.slice(eq + 1)]);
  }
  return out;
}
