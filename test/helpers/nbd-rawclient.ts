/**
 * A byte-level NBD client on a raw node socket, for the cases real clients refuse to
 * produce: unknown options, malformed and oversized options/requests, bad magic, truncation.
 * Encodes everything by hand (independently of nbd/protocol.ts) so a wrong constant in the
 * server cannot be mirrored here.
 */
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { SocketReader } from '../../nbd/reader.js';

export const MAGIC = { NBD: 0x4e42444d41474943n, IHAVEOPT: 0x49484156454f5054n, OPT_REPLY: 0x3e889045565a9n, REQUEST: 0x25609513, SIMPLE: 0x67446698, STRUCTURED: 0x668e33ef };

export interface OptReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface Chunk {
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

export class RawClient {
  reader: SocketReader;
  /** resolves when the server closes the connection */
  readonly closed: Promise<void>;
  private sock: Socket | TLSSocket;

  private constructor(private readonly raw: Socket) {
    this.sock = raw;
    raw.on('error', () => {});
    this.reader = new SocketReader(raw);
    this.closed = new Promise((r) => raw.once('close', () => r()));
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = connect({ port, host }, () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  write(b: Buffer): void {
    if (!this.sock.destroyed) this.sock.write(b);
  }

  destroy(): void {
    this.sock.destroy();
    this.raw.destroy();
  }

  /** Reads the server greeting and answers with client flags (default FIXED_NEWSTYLE|NO_ZEROES). */
  async greet(clientFlags = 3): Promise<{ handshakeFlags: number }> {
    const g = await this.reader.read(18);
    if (g.readBigUInt64BE(0) !== MAGIC.NBD || g.readBigUInt64BE(8) !== MAGIC.IHAVEOPT) throw new Error('bad server greeting');
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags);
    this.write(f);
    return { handshakeFlags: g.readUInt16BE(16) };
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), declaredLength = data.length): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(MAGIC.IHAVEOPT, 0);
    h.writeUInt32BE(option >>> 0, 8);
    h.writeUInt32BE(declaredLength >>> 0, 12);
    this.write(Buffer.concat([h, data]));
  }

  async readOptReply(): Promise<OptReply> {
    const h = await this.reader.read(20);
    if (h.readBigUInt64BE(0) !== MAGIC.OPT_REPLY) throw new Error('bad option reply magic');
    const len = h.readUInt32BE(16);
    if (len > 1 << 20) throw new Error(`option reply length ${len}`);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.reader.read(len) };
  }

  /** Reads option replies up to and including the first ACK or error. */
  async readOptReplies(): Promise<OptReply[]> {
    const out: OptReply[] = [];
    for (;;) {
      const r = await this.readOptReply();
      out.push(r);
      if (r.type === 1 || r.type >= 0x80000000) return out;
    }
  }

  async option(option: number, data?: Buffer): Promise<OptReply[]> {
    this.sendOption(option, data);
    return this.readOptReplies();
  }

  static goData(name: string, infos: number[] = []): Buffer {
    const n = Buffer.from(name, 'utf8');
    const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
    b.writeUInt32BE(n.length, 0);
    n.copy(b, 4);
    b.writeUInt16BE(infos.length, 4 + n.length);
    infos.forEach((i, k) => b.writeUInt16BE(i, 6 + n.length + 2 * k));
    return b;
  }

  static metaData(name: string, queries: string[]): Buffer {
    const parts: Buffer[] = [];
    const n = Buffer.from(name);
    const h = Buffer.alloc(4);
    h.writeUInt32BE(n.length);
    parts.push(h, n);
    const q = Buffer.alloc(4);
    q.writeUInt32BE(queries.length);
    parts.push(q);
    for (const s of queries) {
      const b = Buffer.from(s);
      const l = Buffer.alloc(4);
      l.writeUInt32BE(b.length);
      parts.push(l, b);
    }
    return Buffer.concat(parts);
  }

  /** NBD_OPT_GO; returns the export size and transmission flags, or throws with the error type. */
  async go(name: string, opts: { structured?: boolean; meta?: boolean } = {}): Promise<{ size: number; flags: number }> {
    if (opts.structured) {
      const r = await this.option(8);
      if (r[0]!.type !== 1) throw new Error('structured replies refused');
    }
    if (opts.meta) {
      const r = await this.option(10, RawClient.metaData(name, ['base:allocation']));
      if (r[r.length - 1]!.type !== 1) throw new Error('meta context refused');
    }
    const replies = await this.option(7, RawClient.goData(name, [3]));
    const last = replies[replies.length - 1]!;
    if (last.type !== 1) throw Object.assign(new Error(`GO failed with 0x${last.type.toString(16)}`), { type: last.type });
    const info = replies.find((r) => r.type === 3 && r.data.readUInt16BE(0) === 0)!;
    return { size: Number(info.data.readBigUInt64BE(2)), flags: info.data.readUInt16BE(10) };
  }

  /** After an ACK to STARTTLS: runs the TLS client handshake on the same socket. */
  async startTls(opts: { ca: Buffer; cert?: Buffer; key?: Buffer; servername?: string }): Promise<void> {
    this.reader.detach();
    const s = tlsConnect({ socket: this.raw, ca: opts.ca, cert: opts.cert, key: opts.key, servername: opts.servername ?? 'localhost' });
    s.on('error', () => {});
    await new Promise<void>((resolve, reject) => {
      s.once('secureConnect', () => resolve());
      s.once('error', reject);
      s.once('close', () => reject(new Error('closed during TLS handshake')));
    });
    this.sock = s;
    this.reader = new SocketReader(s);
  }

  request(type: number, offset: number, length: number, opts: { flags?: number; cookie?: bigint; payload?: Buffer; magic?: number } = {}): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(opts.magic ?? MAGIC.REQUEST, 0);
    h.writeUInt16BE(opts.flags ?? 0, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(opts.cookie ?? 1n, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length >>> 0, 24);
    this.write(opts.payload ? Buffer.concat([h, opts.payload]) : h);
  }

  /** Simple reply: error and cookie; reads `dataLength` bytes of data when error is 0. */
  async readSimple(dataLength = 0): Promise<{ error: number; cookie: bigint; data: Buffer }> {
    const h = await this.reader.read(16);
    if (h.readUInt32BE(0) !== MAGIC.SIMPLE) throw new Error(`expected simple reply, magic 0x${h.readUInt32BE(0).toString(16)}`);
    const error = h.readUInt32BE(4);
    const data = error === 0 && dataLength > 0 ? await this.reader.read(dataLength) : Buffer.alloc(0);
    return { error, cookie: h.readBigUInt64BE(8), data };
  }

  async readChunk(): Promise<Chunk> {
    const h = await this.reader.read(20);
    if (h.readUInt32BE(0) !== MAGIC.STRUCTURED) throw new Error(`expected structured chunk, magic 0x${h.readUInt32BE(0).toString(16)}`);
    const len = h.readUInt32BE(16);
    if (len > 64 << 20) throw new Error(`chunk length ${len}`);
    return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8), payload: await this.reader.read(len) };
  }

  /** All chunks of one structured reply (until the DONE flag). */
  async readStructured(): Promise<Chunk[]> {
    const out: Chunk[] = [];
    for (;;) {
      const c = await this.readChunk();
      out.push(c);
      if (c.flags & 1) return out;
    }
  }
}
