/**
 * In-memory plumbing for the NBD fuzz targets: a fake socket the real SocketReader reads
 * from (bytes arrive in pieces, interleaved with the parser's awaits), a small sparse
 * device with every optional member, a provider that counts opens and releases, and
 * checks of what the server wrote.
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { BlockDeviceError, type BlockDevice, type Extent } from '../../blockdev/types.js';
import { SocketReader } from '../../nbd/reader.js';
import { OPTION_REPLY_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE } from '../../nbd/protocol.js';
import type { ExportProvider, ServerContext } from '../../nbd/types.js';
import type { TransmissionIo } from '../../nbd/transmission.js';
import { invariant } from './engine.js';
import type { Rng } from './rng.js';

export class FakeSocket extends EventEmitter {
  pause(): this {
    return this;
  }
  resume(): this {
    return this;
  }
}

export function fakeReader(): { sock: FakeSocket; reader: SocketReader } {
  const sock = new FakeSocket();
  return { sock, reader: new SocketReader(sock as unknown as Duplex) };
}

/** Sends `data` in pieces, yielding to the parser between some of them, then ends. */
export async function feed(sock: FakeSocket, data: Buffer, r: Rng): Promise<void> {
  for (let pos = 0; pos < data.length; ) {
    const n = 1 + r.int(r.chance(0.5) ? 16 : 4096);
    sock.emit('data', data.subarray(pos, pos + n));
    pos += n;
    if (r.chance(0.5)) for (let k = r.int(4); k >= 0; k--) await null;
  }
  sock.emit('end');
  sock.emit('close');
}

export const DEV_SIZE = 1 << 20;
const PAGE = 4096;

/** A sparse 1 MiB device; `failAt` makes reads of that page fail (an I/O error path). */
export class FuzzDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;
  readonly blockSizes?: { minimum: number; preferred: number; maximum: number };
  readonly canMultiConn = true;
  private pages = new Map<number, Buffer>();
  write?: BlockDevice['write'];
  trim?: BlockDevice['trim'];
  zero?: BlockDevice['zero'];
  flush?: BlockDevice['flush'];
  blockStatus?: BlockDevice['blockStatus'];
  cache?: BlockDevice['cache'];

  constructor(opts: { readOnly?: boolean; size?: number; minBlock?: number; lean?: boolean; failPage?: number }) {
    this.size = opts.size ?? DEV_SIZE;
    this.readOnly = opts.readOnly ?? false;
    if (opts.minBlock) this.blockSizes = { minimum: opts.minBlock, preferred: 4096, maximum: 64 * 1024 };
    const fail = opts.failPage;
    for (let i = 0; i < this.size / PAGE; i += 7) this.pages.set(i, Buffer.alloc(PAGE, i & 0xff));
    this.read = async (offset, length) => {
      if (offset < 0 || offset + length > this.size) throw new BlockDeviceError('EINVAL', 'read out of range');
      if (fail !== undefined && Math.floor(offset / PAGE) <= fail && fail <= Math.floor((offset + length - 1) / PAGE)) throw new BlockDeviceError('EIO', 'injected read error');
      const out = Buffer.alloc(length);
      for (let p = Math.floor(offset / PAGE); p * PAGE < offset + length; p++) {
        const page = this.pages.get(p);
        if (page) page.copy(out, Math.max(0, p * PAGE - offset), Math.max(0, offset - p * PAGE), Math.min(PAGE, offset + length - p * PAGE));
      }
      return out;
    };
    if (!this.readOnly) {
      this.write = async (offset, data) => {
        if (offset + data.length > this.size) throw new BlockDeviceError('ENOSPC', 'write past end');
        if (data.length && offset % PAGE === 0) this.pages.set(offset / PAGE, Buffer.alloc(PAGE, data[0]!));
      };
    }
    if (opts.lean) return;
    this.flush = async () => {};
    if (!this.readOnly) {
      this.trim = async (offset) => void this.pages.delete(Math.floor(offset / PAGE));
      this.zero = async (_o, _l, z) => {
        if (z?.fast) throw new BlockDeviceError('ENOTSUP', 'no fast zero');
      };
    }
    this.blockStatus = async (offset, length) => {
      const out: Extent[] = [];
      let pos = offset;
      while (pos < offset + length && out.length < 64) {
        const p = Math.floor(pos / PAGE);
        const end = Math.min((p + 1) * PAGE, offset + length);
        const hole = !this.pages.has(p);
        out.push({ offset: pos, length: end - pos, hole, zero: hole });
        pos = end;
      }
      return out;
    };
    this.cache = async () => {};
  }
  read: BlockDevice['read'];
}

export class FuzzProvider implements ExportProvider {
  opens = 0;
  releases = 0;
  list() {
    return [{ name: 'a', description: 'read-only' }, { name: 'scratch' }, { name: 'blocks', description: 'aligned' }];
  }
  async open(name: string): Promise<BlockDevice | null> {
    this.opens++;
    switch (name) {
      case 'a':
        return new FuzzDevice({ readOnly: true });
      case 'scratch':
        return new FuzzDevice({});
      case 'blocks':
        return new FuzzDevice({ minBlock: 512, failPage: 3 });
      case 'lean':
        return new FuzzDevice({ lean: true });
      case 'hidden':
        return new FuzzDevice({});
      case 'bad-size':
        return new FuzzDevice({ size: -1 });
      case 'boom':
        this.opens--;
        throw new Error('provider failed');
      default:
        this.opens--;
        return null;
    }
  }
  release(): void {
    this.releases++;
  }
}

/**
 * A server context. Built untyped and cast, so the fuzzer keeps compiling while the context
 * grows members (access control, budgets) that it fills in when they exist.
 */
export function context(provider: ExportProvider, cfg: number): ServerContext {
  const ctx = {
    provider,
    maxInFlightBytes: cfg & 0x40 ? 64 * 1024 : 32 * 1024 * 1024,
    maxConnections: 256,
    budget: { used: 0, max: cfg & 0x80 ? 128 * 1024 : 256 * 1024 * 1024, waiters: new Set<() => void>() },
    access: (name: string) => (name === 'hidden' ? 'none' : name === 'a' || name === 'blocks' ? 'read' : 'write'),
    defaultExport: cfg & 1 ? 'scratch' : undefined,
    maxRequestBytes: 256 * 1024,
    maxInFlight: cfg & 2 ? 1 : 16,
    handshakeTimeoutMs: 1000,
    tls: cfg & 4 ? { context: {} as never, required: (cfg & 8) !== 0, verifyPeer: false } : null,
    log: () => {},
    shuttingDown: (cfg & 0x30) === 0x30,
  };
  return ctx as unknown as ServerContext;
}

/** What the transmission phase needs from a connection, writing to `sendv`. */
export function transmissionIo(reader: SocketReader, sendv: (bufs: Buffer[]) => boolean): TransmissionIo {
  const io = {
    reader,
    writableLength: 0,
    sendv,
    onDrain: () => {},
    // nothing is queued: what was sent has left
    afterFlush: (cb: () => void) => queueMicrotask(cb),
    log: () => {},
  };
  return io as unknown as TransmissionIo;
}

export const CLIENT = { listener: { transport: 'tcp', host: '127.0.0.1', port: 10809 }, peer: '127.0.0.1:40000', tls: false };

/** Option replies after the 18-byte greeting; optionally a final EXPORT_NAME reply (10 or 134 bytes). */
export function checkHandshakeOutput(out: Buffer, exportNameReply: boolean): void {
  invariant(out.length >= 18 && out.readBigUInt64BE(0) === 0x4e42444d41474943n, 'output starts with the greeting');
  let pos = 18;
  while (pos < out.length) {
    const rest = out.length - pos;
    if (rest >= 20 && out.readBigUInt64BE(pos) === OPTION_REPLY_MAGIC) {
      const len = out.readUInt32BE(pos + 16);
      invariant(len <= 64 * 1024 && pos + 20 + len <= out.length, `option reply of ${len} bytes fits what was sent`);
      pos += 20 + len;
      continue;
    }
    invariant(exportNameReply && (rest === 10 || rest === 134), `server output has ${rest} unframed bytes at ${pos}`);
    return;
  }
}

const REPLY_TYPES = new Set([0, 1, 2, 5, 0x8001, 0x8002]);

/** One transmission reply (one sendv): a simple reply, or structured chunks ending with DONE. */
export function checkReply(bufs: Buffer[], structured: boolean): void {
  const b = bufs.length === 1 ? bufs[0]! : Buffer.concat(bufs);
  invariant(b.length >= 16, `reply of ${b.length} bytes`);
  const magic = b.readUInt32BE(0);
  if (!structured) {
    invariant(magic === SIMPLE_REPLY_MAGIC, 'simple reply magic');
    return;
  }
  let pos = 0;
  for (;;) {
    invariant(b.length - pos >= 20 && b.readUInt32BE(pos) === STRUCTURED_REPLY_MAGIC, `structured chunk at ${pos}`);
    const flags = b.readUInt16BE(pos + 4);
    const type = b.readUInt16BE(pos + 6);
    const len = b.readUInt32BE(pos + 16);
    invariant(REPLY_TYPES.has(type), `reply type ${type}`);
    invariant(pos + 20 + len <= b.length, 'chunk length fits the reply');
    if (type === 0x8001 || type === 0x8002) invariant(len >= 6 && b.readUInt16BE(pos + 24) <= len - 6, 'error message fits its chunk');
    pos += 20 + len;
    if (flags & REPLY_FLAG_DONE) {
      invariant(pos === b.length, 'nothing after the DONE chunk');
      return;
    }
    invariant(pos < b.length, 'a reply ends with a DONE chunk');
  }
}
