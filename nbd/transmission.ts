/**
 * The transmission phase: a request loop that reads headers (and write payloads) in order,
 * checks them, and runs up to `maxInFlight` of them concurrently against the device. Each
 * reply is written as one corked burst (header + data in a single writev), so replies never
 * interleave on the wire while still completing out of order.
 */
import type { BlockDevice } from '../blockdev/types.js';
import type { Negotiated } from './handshake.js';
import { EofError, type SocketReader } from './reader.js';
import { CMD, CMD_FLAG, ERR, REQUEST_HEADER_SIZE, TF, commandName, errnoOf, messageOf, parseRequest, type Request } from './protocol.js';
import { Replier } from './replies.js';
import { blockStatus, checkRead, sparseRead } from './extents.js';
import type { ServerContext } from './types.js';

/** What the transmission phase needs from the connection. */
export interface TransmissionIo {
  readonly reader: SocketReader;
  /** bytes queued for the peer and not yet handed to the kernel */
  readonly writableLength: number;
  /** writes all buffers as one contiguous burst; false if the socket is gone */
  sendv(bufs: Buffer[]): boolean;
  /** called whenever queued output drains below the socket's mark */
  onDrain(cb: () => void): void;
  /** cb runs once what was sent so far left for the kernel (or the socket is gone); absent: at once */
  afterFlush?(cb: () => void): void;
  log(event: string, fields: Record<string, unknown>): void;
}

/** a WRITE over the maximum payload is read and discarded up to this size; above it the connection is closed */
const MAX_DISCARD = 64 * 1024 * 1024;
/** stop accepting requests while this much reply data waits for the peer */
const OUTPUT_HIGH_WATER = 8 * 1024 * 1024;
/**
 * a CACHE request is carried out (and counted in the in-flight bytes) this much at a time,
 * so its cost is bounded whatever range it names
 */
const CACHE_WINDOW = 8 * 1024 * 1024;
/** payload bytes per connection when the context does not say */
const DEFAULT_INFLIGHT_BYTES = 32 * 1024 * 1024;
/** zero buffer size for emulated WRITE_ZEROES */
const ZERO_CHUNK = 1024 * 1024;
let zeroChunk: Buffer | null = null;

export type EndReason = 'disconnect' | 'eof' | 'protocol-error' | 'stopped' | 'io-error';

class Rejected {
  constructor(
    readonly errno: number,
    readonly message: string,
  ) {}
}

export class Transmission {
  private inflight = 0;
  /** payload bytes this connection holds: reserved when a request is taken on, freed when its reply left */
  private inflightBytes = 0;
  private waiter: (() => void) | null = null;
  private readonly wakeFn = () => this.wake();
  private readonly maxBytes: number;
  private readonly budget: { used: number; max: number; waiters: Set<() => void> };
  private idleWaiters: Array<() => void> = [];
  private stopping = false;
  private readonly dev: BlockDevice;
  private readonly out: Replier;

  constructor(
    private readonly io: TransmissionIo,
    private readonly ctx: ServerContext,
    private readonly x: Negotiated,
  ) {
    this.dev = x.device;
    this.out = new Replier(io, x.structured);
    this.maxBytes = ctx.maxInFlightBytes ?? DEFAULT_INFLIGHT_BYTES;
    this.budget = ctx.budget ?? { used: 0, max: Infinity, waiters: new Set() };
    io.onDrain(this.wakeFn);
  }

  /** the window a CACHE request is carried out (and counted) in */
  private cacheWindow(): number {
    return Math.min(CACHE_WINDOW, this.maxBytes);
  }

  /** payload bytes a request holds while in flight */
  private bytesOf(req: Request): number {
    if (req.type === CMD.READ || req.type === CMD.WRITE) return req.length <= this.x.caps.maxPayload ? req.length : 0;
    if (req.type === CMD.CACHE) return Math.min(req.length, this.cacheWindow());
    return 0;
  }

  /** Stop accepting requests (server shutdown); in-flight ones still complete. */
  stop(): void {
    this.stopping = true;
    this.wake();
  }

  /** Resolves when no request is in flight. */
  idle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** Serves requests until the client disconnects or breaks the protocol. */
  async run(): Promise<EndReason> {
    const reason = await this.loop();
    await this.idle();
    return reason;
  }

  private async loop(): Promise<EndReason> {
    const { reader } = this.io;
    const maxPayload = this.x.caps.maxPayload;
    for (;;) {
      await this.capacity(0);
      if (this.stopping) return 'stopped';
      let head: Buffer;
      try {
        head = await reader.read(REQUEST_HEADER_SIZE);
      } catch (e) {
        return this.readFailure(e, 'request header');
      }
      const req = parseRequest(head);
      if (!req) {
        this.io.log('protocol-error', { phase: 'transmission', reason: 'bad request magic' });
        return 'protocol-error';
      }
      if (req.type === CMD.DISC) return 'disconnect';

      if (req.type === CMD.WRITE) {
        if (req.length > maxPayload) {
          if (req.length > MAX_DISCARD) {
            this.io.log('protocol-error', { phase: 'transmission', reason: `write payload of ${req.length} bytes` });
            return 'protocol-error';
          }
          try {
            await reader.skip(req.length);
          } catch (e) {
            return this.readFailure(e, 'write payload');
          }
          this.out.error(req, ERR.EINVAL, `write of ${req.length} bytes exceeds the maximum payload of ${maxPayload}`);
          continue;
        }
        const bytes = await this.capacity(req.length);
        let payload: Buffer;
        try {
          payload = await reader.read(req.length);
        } catch (e) {
          this.free(bytes);
          return this.readFailure(e, 'write payload');
        }
        this.submit(req, payload, bytes);
        continue;
      }
      const bytes = await this.capacity(this.bytesOf(req));
      this.submit(req, null, bytes);
    }
  }

  private readFailure(e: unknown, what: string): EndReason {
    if (this.stopping) return 'stopped';
    if (e instanceof EofError) {
      if (e.partial === 0 && what === 'request header') return 'eof';
      this.io.log('protocol-error', { phase: 'transmission', reason: `truncated ${what}: ${e.message}` });
      return 'protocol-error';
    }
    this.io.log('io-error', { phase: 'transmission', error: messageOf(e) });
    return 'io-error';
  }

  /**
   * Waits until one more request holding `bytes` of payload may be taken on, and reserves
   * them: within this connection's request and byte bounds (one request alone may use the
   * whole bound) and within the server-wide byte budget shared by every connection.
   * Returns the bytes reserved (0 when stopping).
   */
  private async capacity(bytes: number): Promise<number> {
    const budget = this.budget;
    for (;;) {
      if (this.stopping) return 0;
      const local =
        this.inflight >= this.ctx.maxInFlight ||
        this.io.writableLength > OUTPUT_HIGH_WATER ||
        (bytes > 0 && this.inflightBytes > 0 && this.inflightBytes + bytes > this.maxBytes);
      const global = !local && bytes > 0 && budget.used > 0 && budget.used + bytes > budget.max;
      if (!local && !global) break;
      await new Promise<void>((r) => {
        this.waiter = r;
        if (global) budget.waiters.add(this.wakeFn);
      });
      budget.waiters.delete(this.wakeFn);
    }
    this.inflightBytes += bytes;
    budget.used += bytes;
    return bytes;
  }

  /** gives back reserved bytes and wakes whoever waits for them */
  private free(bytes: number): void {
    if (bytes === 0) return;
    this.inflightBytes -= bytes;
    const budget = this.budget;
    budget.used -= bytes;
    this.wake();
    for (const w of [...budget.waiters]) w();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  private submit(req: Request, payload: Buffer | null, bytes: number): void {
    const bad = this.check(req);
    if (bad) {
      this.out.error(req, bad.errno, bad.message);
      this.free(bytes);
      return;
    }
    this.inflight++;
    this.execute(req, payload)
      .catch((e: unknown) => {
        const errno = e instanceof Rejected ? e.errno : errnoOf(e);
        const message = e instanceof Rejected ? e.message : messageOf(e);
        if (!(e instanceof Rejected)) {
          this.io.log('request-error', { command: commandName(req.type), offset: req.offset, length: req.length, errno, error: message });
        }
        this.out.error(req, errno, message);
      })
      .finally(() => {
        this.inflight--;
        // the payload stays counted until its reply has left (a client that does not read holds it)
        if (this.io.afterFlush) this.io.afterFlush(() => this.free(bytes));
        else this.free(bytes);
        this.wake();
        if (this.inflight === 0) for (const r of this.idleWaiters.splice(0)) r();
      });
  }

  /** Validates a request against the negotiated export; null when it may run. */
  private check(req: Request): Rejected | null {
    const { caps } = this.x;
    const flags = caps.flags;
    let allowed = flags & TF.SEND_FUA ? CMD_FLAG.FUA : 0;
    switch (req.type) {
      case CMD.READ:
        if (this.x.structured) allowed |= CMD_FLAG.DF;
        break;
      case CMD.WRITE_ZEROES:
        allowed |= CMD_FLAG.NO_HOLE;
        if (flags & TF.SEND_FAST_ZERO) allowed |= CMD_FLAG.FAST_ZERO;
        break;
      case CMD.BLOCK_STATUS:
        allowed |= CMD_FLAG.REQ_ONE;
        break;
      case CMD.WRITE:
      case CMD.FLUSH:
      case CMD.TRIM:
      case CMD.CACHE:
        break;
      default:
        return new Rejected(ERR.EINVAL, `unknown command ${req.type}`);
    }
    if (req.flags & ~allowed) {
      return new Rejected(ERR.EINVAL, `command flags 0x${req.flags.toString(16)} not valid for ${commandName(req.type)}`);
    }
    const writes = req.type === CMD.WRITE || req.type === CMD.TRIM || req.type === CMD.WRITE_ZEROES;
    if (writes && !caps.writable) return new Rejected(ERR.EPERM, 'export is read-only');
    if (req.type === CMD.FLUSH) {
      return typeof this.dev.flush === 'function' ? null : new Rejected(ERR.EINVAL, 'export does not support flush');
    }
    if (req.type === CMD.TRIM && typeof this.dev.trim !== 'function') return new Rejected(ERR.EINVAL, 'export does not support trim');
    if (req.type === CMD.BLOCK_STATUS) {
      if (!this.x.metaContextId) return new Rejected(ERR.EINVAL, 'no metadata context was negotiated');
      if (req.length === 0) return new Rejected(ERR.EINVAL, 'block status of zero length');
    }
    if ((req.type === CMD.READ || req.type === CMD.WRITE) && req.length > caps.maxPayload) {
      return new Rejected(ERR.EINVAL, `${commandName(req.type)} of ${req.length} bytes exceeds the maximum payload of ${caps.maxPayload}`);
    }
    if (req.offset + req.length > caps.size || req.offset > Number.MAX_SAFE_INTEGER) {
      const errno = req.type === CMD.WRITE || req.type === CMD.WRITE_ZEROES ? ERR.ENOSPC : ERR.EINVAL;
      return new Rejected(errno, `request [${req.offset}, +${req.length}) is beyond the end of the export (${caps.size} bytes)`);
    }
    if (caps.minBlock > 1 && (req.offset % caps.minBlock || req.length % caps.minBlock)) {
      return new Rejected(ERR.EINVAL, `request is not aligned to the minimum block size ${caps.minBlock}`);
    }
    return null;
  }

  private async execute(req: Request, payload: Buffer | null): Promise<void> {
    const dev = this.dev;
    const fua = (req.flags & CMD_FLAG.FUA) !== 0;
    switch (req.type) {
      case CMD.READ: {
        if (req.length === 0) {
          this.out.ok(req);
          return;
        }
        if (this.x.structured && !(req.flags & CMD_FLAG.DF) && typeof dev.blockStatus === 'function') {
          const parts = await sparseRead(dev, req.offset, req.length);
          this.out.readChunks(req, parts);
          return;
        }
        const data = checkRead(await dev.read(req.offset, req.length), req.length);
        this.out.data(req, data);
        return;
      }
      case CMD.WRITE:
        if (req.length > 0) await dev.write!(req.offset, payload!, fua);
        this.out.ok(req);
        return;
      case CMD.FLUSH:
        await dev.flush!();
        this.out.ok(req);
        return;
      case CMD.TRIM:
        if (req.length > 0) await dev.trim!(req.offset, req.length, fua);
        this.out.ok(req);
        return;
      case CMD.WRITE_ZEROES:
        if (req.length > 0) await this.zero(req, fua);
        this.out.ok(req);
        return;
      case CMD.CACHE:
        if (req.length > 0 && typeof dev.cache === 'function') {
          // a hint: carried out one window at a time, so a request for the whole export costs one window
          const w = this.cacheWindow();
          for (let pos = req.offset, end = req.offset + req.length; pos < end && !this.stopping; pos += w) {
            await dev.cache(pos, Math.min(w, end - pos));
          }
        }
        this.out.ok(req);
        return;
      case CMD.BLOCK_STATUS: {
        const one = (req.flags & CMD_FLAG.REQ_ONE) !== 0;
        const extents = await blockStatus(dev, req.offset, req.length, one);
        this.out.blockStatus(req, this.x.metaContextId, extents);
        return;
      }
    }
  }

  private async zero(req: Request, fua: boolean): Promise<void> {
    const dev = this.dev;
    const fast = (req.flags & CMD_FLAG.FAST_ZERO) !== 0;
    const mayTrim = (req.flags & CMD_FLAG.NO_HOLE) === 0;
    if (typeof dev.zero === 'function') {
      try {
        await dev.zero(req.offset, req.length, { fua, mayTrim, fast });
        return;
      } catch (e) {
        // a device that cannot zero natively: fall back to writing zeroes unless asked to be fast
        if (fast || errnoOf(e) !== ERR.ENOTSUP) throw e;
      }
    }
    if (fast) throw new Rejected(ERR.ENOTSUP, 'fast zeroing is not supported by this export');
    zeroChunk ??= Buffer.alloc(ZERO_CHUNK);
    for (let pos = req.offset, end = req.offset + req.length; pos < end; ) {
      const n = Math.min(ZERO_CHUNK, end - pos);
      await dev.write!(pos, n === ZERO_CHUNK ? zeroChunk : zeroChunk.subarray(0, n), fua);
      pos += n;
    }
  }
}
