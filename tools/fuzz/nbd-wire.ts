/** Client-side NBD encoders for seeds and structured mutations (fixed newstyle). */
import type { Rng } from './rng.js';

export const IHAVEOPT = 0x49484156454f5054n;
export const REQUEST_MAGIC = 0x25609513;

export function option(opt: number, data: Buffer, declared = data.length): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(opt >>> 0, 8);
  h.writeUInt32BE(declared >>> 0, 12);
  return Buffer.concat([h, data]);
}

export function goData(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(6 + n.length + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((v, i) => b.writeUInt16BE(v, 6 + n.length + 2 * i));
  return b;
}

export function metaData(name: string, queries: string[]): Buffer {
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

export function request(type: number, offset: number | bigint, length: number, flags = 0, cookie = 7n, payload?: Buffer): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(REQUEST_MAGIC, 0);
  h.writeUInt16BE(flags & 0xffff, 4);
  h.writeUInt16BE(type & 0xffff, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeBigUInt64BE(BigInt(offset) & 0xffffffffffffffffn, 16);
  h.writeUInt32BE(length >>> 0, 24);
  return payload ? Buffer.concat([h, payload]) : h;
}

export const NAMES = ['a', 'scratch', 'blocks', 'lean', 'bad-size', 'boom', 'hidden', '', 'missing', '../../etc/passwd'];

export function randomOption(r: Rng): Buffer {
  const opt = r.chance(0.85) ? r.int(13) : r.next();
  const name = r.pick(NAMES);
  let data: Buffer;
  switch (opt) {
    case 1:
      data = Buffer.from(name);
      break;
    case 6:
    case 7:
      data = goData(name, Array.from({ length: r.int(5) }, () => r.int(6)));
      break;
    case 9:
    case 10:
      data = metaData(name, Array.from({ length: r.int(4) }, () => r.pick(['base:allocation', 'base:', 'qemu:x', ''])));
      break;
    default:
      data = r.chance(0.6) ? Buffer.alloc(0) : r.bytes(r.int(64));
  }
  if (r.chance(0.1)) data = Buffer.concat([data, r.bytes(1 + r.int(8))]);
  if (r.chance(0.1)) data = data.subarray(0, r.int(data.length + 1));
  const declared = r.chance(0.05) ? r.pick([data.length + 1 + r.int(64), 0xffffffff, 70 * 1024, 2 * 1024 * 1024, 1024 * 1024]) : data.length;
  return option(opt, data, declared);
}

export function randomRequest(r: Rng, size: number): Buffer {
  const type = r.chance(0.9) ? r.pick([0, 0, 1, 3, 4, 5, 6, 7, 7]) : r.next() & 0xffff;
  const flags = r.chance(0.6) ? 0 : r.chance(0.7) ? 1 << r.int(6) : r.next() & 0xffff;
  const offset = r.pick<number | bigint>([0, 512 * r.int(size / 512), r.int(size), size - 512, size - 1, size, size + 4096, 2 ** 40, 2 ** 53, 2n ** 63n, 2n ** 64n - 1n]);
  const length = r.pick([0, 1, 511, 512, 4096, 65536, r.int(1 << 18), 256 * 1024, 256 * 1024 + 1, 33 * 1024 * 1024, 0xffffffff]);
  let payload: Buffer | undefined;
  if (type === 1) {
    const n = r.chance(0.8) ? Math.min(length, 300 * 1024) : r.int(2048);
    payload = Buffer.alloc(n, 0x42);
  }
  if (r.chance(0.03)) {
    const b = request(type, offset, length, flags, BigInt(r.next()), payload);
    b.writeUInt32BE(r.next(), 0);
    return b;
  }
  return request(type, offset, length, flags, BigInt(r.next()), payload);
}
