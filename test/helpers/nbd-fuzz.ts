/**
 * Malformed-input generators for the NBD fuzz test: random bytes, random option streams,
 * random request streams after a valid handshake, and byte flips of a valid session.
 * Seeded, so a failing seed can be replayed.
 */
import { connect } from 'node:net';

export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    this.s = x;
    return x;
  }
  int(n: number): number {
    return this.next() % n;
  }
  chance(p: number): boolean {
    return this.next() / 0x100000000 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.next() & 0xff;
    return b;
  }
}

const IHAVEOPT = 0x49484156454f5054n;
const NAMES = ['a', 'scratch', '', 'missing', '../../etc/passwd', 'a'.repeat(5000)];

function option(opt: number, data: Buffer, declared = data.length): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(opt >>> 0, 8);
  h.writeUInt32BE(declared >>> 0, 12);
  return Buffer.concat([h, data]);
}

function goData(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(6 + n.length + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((v, i) => b.writeUInt16BE(v, 6 + n.length + 2 * i));
  return b;
}

function metaData(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [Buffer.alloc(4), Buffer.from(name), Buffer.alloc(4)];
  parts[0]!.writeUInt32BE(Buffer.byteLength(name));
  parts[2]!.writeUInt32BE(queries.length);
  for (const q of queries) {
    const l = Buffer.alloc(4);
    l.writeUInt32BE(Buffer.byteLength(q));
    parts.push(l, Buffer.from(q));
  }
  return Buffer.concat(parts);
}

function randomOption(r: Rng): Buffer {
  const opt = r.chance(0.8) ? r.int(13) : r.next();
  const name = r.pick(NAMES);
  let data: Buffer;
  switch (opt) {
    case 6:
    case 7:
      data = goData(name, Array.from({ length: r.int(5) }, () => r.int(6)));
      break;
    case 9:
    case 10:
      data = metaData(name, Array.from({ length: r.int(4) }, () => r.pick(['base:allocation', 'base:', 'qemu:x', ''])));
      break;
    default:
      data = r.chance(0.5) ? Buffer.alloc(0) : r.bytes(r.int(300));
  }
  if (r.chance(0.2)) data = Buffer.concat([data, r.bytes(r.int(16))]); // trailing junk
  if (r.chance(0.1)) data = data.subarray(0, r.int(data.length + 1)); // short
  // a declared length that lies now and then (bigger: the server waits for bytes that never come)
  const declared = r.chance(0.1) ? r.pick([data.length + r.int(64), 0xffffffff, 70 * 1024, 2 * 1024 * 1024]) : data.length;
  return option(opt, data, declared);
}

function request(r: Rng, size: number): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(r.chance(0.95) ? 0x25609513 : r.next(), 0);
  h.writeUInt16BE(r.chance(0.7) ? 0 : r.chance(0.5) ? 1 << r.int(6) : r.next() & 0xffff, 4);
  const type = r.chance(0.9) ? r.pick([0, 0, 0, 1, 3, 4, 5, 6, 7]) : r.next() & 0xffff;
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(BigInt(r.next()), 8);
  const offset = r.pick([0, r.int(size), size - 512, size, size + 4096, 2 ** 40, 2 ** 63]);
  h.writeBigUInt64BE(BigInt(offset) & 0xffffffffffffffffn, 16);
  const length = r.pick([0, 1, 512, 4096, 65536, r.int(1 << 20), 33 * 1024 * 1024, 0xffffffff]);
  h.writeUInt32BE(length >>> 0, 24);
  if (type !== 1) return h;
  // WRITE: payload complete, short, or absent
  const n = r.chance(0.6) ? Math.min(length, 1 << 20) : r.int(2048);
  return Buffer.concat([h, Buffer.alloc(n, r.int(256))]);
}

export type FuzzKind = 'random-bytes' | 'options' | 'requests' | 'flipped-session';

/** A valid session: greeting reply, structured replies, meta context, GO, a few requests. */
function validSession(size: number): Buffer {
  const parts: Buffer[] = [Buffer.from([0, 0, 0, 3]), option(8, Buffer.alloc(0)), option(10, metaData('scratch', ['base:allocation'])), option(7, goData('scratch', [3]))];
  for (const [type, off, len] of [
    [0, 0, 4096],
    [7, 0, size],
    [1, 8192, 512],
    [6, 0, 65536],
    [4, 65536, 4096],
    [3, 0, 0],
    [2, 0, 0],
  ] as const) {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(7n, 8);
    h.writeBigUInt64BE(BigInt(off), 16);
    h.writeUInt32BE(len, 24);
    parts.push(h);
    if (type === 1) parts.push(Buffer.alloc(len, 0x42));
  }
  return Buffer.concat(parts);
}

export function fuzzPayload(r: Rng, kind: FuzzKind, size: number): Buffer {
  switch (kind) {
    case 'random-bytes':
      return r.bytes(r.int(4096));
    case 'options': {
      const flags = Buffer.alloc(4);
      flags.writeUInt32BE(r.chance(0.9) ? r.int(4) : r.next());
      const opts = Array.from({ length: 1 + r.int(8) }, () => randomOption(r));
      return Buffer.concat([flags, ...opts]);
    }
    case 'requests': {
      const head: Buffer[] = [Buffer.from([0, 0, 0, 3])];
      if (r.chance(0.5)) head.push(option(8, Buffer.alloc(0)));
      if (r.chance(0.5)) head.push(option(10, metaData('scratch', ['base:allocation'])));
      head.push(option(7, goData(r.chance(0.5) ? 'scratch' : 'a', [])));
      const reqs = Array.from({ length: 1 + r.int(12) }, () => request(r, size));
      const all = Buffer.concat([...head, ...reqs]);
      return r.chance(0.2) ? all.subarray(0, r.int(all.length)) : all;
    }
    case 'flipped-session': {
      const b = Buffer.from(validSession(size));
      const flips = 1 + r.int(6);
      for (let i = 0; i < flips; i++) b[r.int(b.length)] ^= 1 << r.int(8);
      return b;
    }
  }
}

/**
 * Connects, reads the greeting, sends `payload` in random pieces, drains replies for a short
 * while, then hangs up. Resolves with how the session ended.
 */
export function fuzzSession(port: number, payload: Buffer, r: Rng, lingerMs: number): Promise<'server-closed' | 'client-closed' | 'error'> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1' });
    let done = false;
    const finish = (how: 'server-closed' | 'client-closed' | 'error') => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve(how);
    };
    const timer = setTimeout(() => finish('client-closed'), lingerMs + 2000);
    s.on('error', () => finish('error'));
    s.on('close', () => finish('server-closed'));
    s.on('data', () => {});
    s.once('data', () => {
      let pos = 0;
      const step = () => {
        if (done) return;
        if (pos >= payload.length) {
          setTimeout(() => finish('client-closed'), r.int(lingerMs));
          return;
        }
        const n = 1 + r.int(Math.max(1, Math.min(payload.length - pos, r.chance(0.5) ? 64 : 65536)));
        s.write(payload.subarray(pos, pos + n));
        pos += n;
        if (r.chance(0.2)) setTimeout(step, r.int(5));
        else step();
      };
      step();
    });
  });
}
