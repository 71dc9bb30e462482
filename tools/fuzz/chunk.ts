/** Fuzz target: drivers/chunk.ts decodeChunk (chunk objects: header, codec payload, digest check). */
import { createHash } from 'node:crypto';
import { CHUNK_HEADER, ChunkCorruptError, decodeChunk, encodeChunk } from '../../drivers/chunk.js';
import type { CodecName } from '../../drivers/codec.js';
import { checkError, invariant, type Target } from './engine.js';
import type { Rng } from './rng.js';

/** input: 32-byte SHA-256 the caller expects, then the chunk object */
function make(plain: Buffer, codec: CodecName): Buffer {
  const { object } = encodeChunk(plain, codec);
  return Buffer.concat([createHash('sha256').update(plain).digest(), object]);
}

function plainOf(r: Rng): Buffer {
  const n = r.pick([0, 1, 100, 4096, 65536]);
  const b = Buffer.alloc(n, r.int(256));
  for (let i = 0; i < n; i += 1 + r.int(64)) b[i] = r.int(256);
  return b;
}

const CODECS: CodecName[] = ['none', 'zlib', 'zstd', 'lz4'];

export const chunkTarget: Target = {
  name: 'chunk',
  description: 'drivers/chunk.ts decodeChunk: chunk objects (BGCK header, none/zlib/zstd/lz4 payload, SHA-256)',
  coverage: ['/drivers/chunk.', '/drivers/codec.'],
  maxLen: 128 * 1024,
  // a header may claim up to 16 MiB of plaintext; the decoder may size its output by that bound
  maxAlloc: 16 * 1024 * 1024 + 64 * 1024,
  seeds: () => {
    const text = Buffer.from('blockgate chunk '.repeat(300));
    const zero = Buffer.alloc(8192);
    return [...CODECS.map((c) => make(text, c)), ...CODECS.map((c) => make(zero, c)), make(Buffer.from([1, 2, 3]), 'none'), make(Buffer.alloc(0), 'zstd')];
  },
  dictionary: [Buffer.from('BGCK'), Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.from([0x78, 0x9c]), Buffer.from([0, 0, 0x01, 0]), Buffer.from([0xff, 0xff, 0xff, 0xff])],
  mutate(input, r) {
    if (r.chance(0.3)) {
      const plain = plainOf(r);
      return make(plain, r.pick(CODECS));
    }
    if (input.length < 32 + CHUNK_HEADER) return null;
    const b = Buffer.from(input);
    const h = 32;
    switch (r.int(4)) {
      case 0:
        b[h + 5] = r.pick([0, 1, 2, 3, 4, 255]);
        return b;
      case 1:
        b.writeUInt32BE(r.pick([0, 1, 4096, 16 * 1024 * 1024, 16 * 1024 * 1024 + 1, 0xffffffff, b.length - h - CHUNK_HEADER, b.length - h - CHUNK_HEADER - 1]) >>> 0, h + 8);
        return b;
      case 2:
        // the lz4 size prefix or the zstd frame header
        if (b.length >= h + CHUNK_HEADER + 4) b.writeUInt32LE(r.pick([0, 1, 0xffffffff, b.readUInt32BE(h + 8), 16 * 1024 * 1024]) >>> 0, h + CHUNK_HEADER);
        return b;
      default:
        b[h + 4 + r.int(4)] = r.int(256);
        return b;
    }
  },
  run(input) {
    const digest = input.subarray(0, 32).toString('hex');
    const object = input.subarray(32);
    let plain: Buffer;
    try {
      plain = decodeChunk(object, digest);
    } catch (e) {
      checkError(e, (x) => x instanceof ChunkCorruptError, 'decodeChunk');
      return 'ChunkCorruptError';
    }
    invariant(createHash('sha256').update(plain).digest('hex') === digest, 'a decoded chunk hashes to its digest');
    return 'ok';
  },
};
