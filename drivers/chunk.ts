/**
 * Chunk objects: the on-disk format of one stored chunk, with its reader and writer.
 *
 *   offset size field
 *   0      4    magic "BGCK"
 *   4      1    format version (1)
 *   5      1    codec id (0 none, 1 zlib, 2 zstd, 3 lz4) of the payload
 *   6      1    flags (bit 0: payload encrypted; reserved)
 *   7      1    reserved, 0
 *   8      4    plaintext length, u32 big-endian
 *   12     ...  payload
 *
 * A chunk is named by the SHA-256 of its plaintext. A payload that does not shrink under
 * the repository's codec is stored with codec "none".
 */
import { createHash } from 'node:crypto';
import { CODEC_ID, type CodecName, codecName, compress, decompress } from './codec.js';
import { type RepoKeys, SEAL_OVERHEAD, contentDigest, seal, unseal } from './crypto.js';



export const CHUNK_MAGIC = Buffer.from('BGCK');
export const CHUNK_VERSION = 1;
export const CHUNK_HEADER = 12;
export const DIGEST_BYTES = 32;
/** 8 KiB: the smallest block of a packed repository (a loose-object repository uses 64 KiB and more) */
export const MIN_CHUNK = 8 * 1024;
export const MAX_CHUNK = 16 * 1024 * 1024;
export const DEFAULT_CHUNK = 4 * 1024 * 1024;
/** the block of a packed repository, chosen by measurement (docs/REPOSITORY.md, "Choosing the block size") */
export const DEFAULT_BLOCK = 16 * 1024;
/** what an object adds to its plaintext at most: the header, and the seal in an encrypted repository */
export const OBJECT_OVERHEAD = CHUNK_HEADER + SEAL_OVERHEAD;

export class ChunkCorruptError extends Error {
  constructor(readonly digest: string, detail: string) {
    super(`chunk ${digest} is corrupt: ${detail}`);
    this.name = 'ChunkCorruptError';
  }
}

export function checkChunkSize(n: number): number {
  if (!Number.isInteger(n) || n < MIN_CHUNK || n > MAX_CHUNK || (n & (n - 1)) !== 0) {
    throw new Error(`chunk size ${n} is not a power of two between 8K and 16M`);
  }
  return n;
}

export function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

const ZERO_PAGE = Buffer.alloc(64 * 1024);
export function isAllZero(data: Buffer): boolean {
  for (let off = 0; off < data.length; off += ZERO_PAGE.length) {
    const end = Math.min(off + ZERO_PAGE.length, data.length);
    if (data.compare(ZERO_PAGE, 0, end - off, off, end) !== 0) return false;
  }
  return true;
}

export interface EncodedChunk {
  object: Buffer;
  codec: CodecName;
}

/**
 * Cheap test for data that will not compress (media, archives, encrypted data): lz4 on a
 * 64 KiB sample from the middle. Saves running the real codec over a whole chunk in vain.
 */
function looksIncompressible(plain: Buffer): boolean {
  if (plain.length < 256 * 1024) return false;
  const mid = Math.floor(plain.length / 2);
  const sample = plain.subarray(mid, mid + 65536);
  return compress('lz4', sample).length > sample.length * 0.98;
}

/** What an encrypted repository seals chunk and page objects with (drivers/crypto.ts). */
export interface Sealing {
  keys: RepoKeys;
  kind: ObjectKind;
}

export type ObjectKind = 'chunks' | 'pages';
/** a blob's kind in a pack index: 0 a chunk, 1 a map page */
export const KIND_ID: Record<ObjectKind, number> = { chunks: 0, pages: 1 };

/** the object name of a chunk or page: `<kind>/<first two hex digits>/<digest>` */
export function objectName(kind: ObjectKind, digest: string): string {
  if (!/^[0-9a-f]{64}$/.test(digest)) throw new Error(`invalid digest ${JSON.stringify(digest)}`);
  return `${kind}/${digest.slice(0, 2)}/${digest}`;
}

/**
 * Encodes a chunk (or page) object: compressed, then, in an encrypted repository, sealed
 * with the object's name `digest` (flag bit 0 set; the header is authenticated, not secret).
 */
export function encodeChunk(plain: Buffer, codec: CodecName, sealing?: Sealing & { digest: string }): EncodedChunk {
  if (codec !== 'none' && looksIncompressible(plain)) codec = 'none';
  let payload = compress(codec, plain);
  let used = codec;
  if (codec !== 'none' && payload.length >= plain.length) {
    payload = plain;
    used = 'none';
  }
  const header = Buffer.alloc(CHUNK_HEADER);
  CHUNK_MAGIC.copy(header, 0);
  header[4] = CHUNK_VERSION;
  header[5] = CODEC_ID[used];
  header.writeUInt32BE(plain.length, 8);
  if (sealing) {
    header[6] = FLAG_ENCRYPTED;
    return { object: seal(sealing.keys, objectName(sealing.kind, sealing.digest), header, payload), codec: used };
  }
  return { object: Buffer.concat([header, payload]), codec: used };
}

const FLAG_ENCRYPTED = 1;

/**
 * Decodes a chunk (or page) object and verifies that its plaintext's digest (SHA-256, or
 * HMAC-SHA-256 in an encrypted repository) is `digest`. An encrypted object needs the keys;
 * an encrypted repository refuses a plain object (no object can be swapped for a forged one).
 */
export function decodeChunk(object: Buffer, digest: string, sealing?: Sealing | null): Buffer {
  if (object.length < CHUNK_HEADER || !object.subarray(0, 4).equals(CHUNK_MAGIC)) {
    throw new ChunkCorruptError(digest, 'bad header magic');
  }
  if (object[4] !== CHUNK_VERSION) throw new ChunkCorruptError(digest, `unsupported format version ${object[4]}`);
  const encrypted = object[6] === FLAG_ENCRYPTED;
  if (object[6] !== 0 && !encrypted) throw new ChunkCorruptError(digest, `unknown flags ${object[6]}`);
  if (encrypted && !sealing) throw new ChunkCorruptError(digest, 'encrypted chunk but the repository has no key');
  if (!encrypted && sealing) throw new ChunkCorruptError(digest, 'a plain object in an encrypted repository');
  const plainLength = object.readUInt32BE(8);
  if (plainLength > MAX_CHUNK) throw new ChunkCorruptError(digest, `plaintext length ${plainLength} too large`);
  let payload: Buffer;
  if (sealing) {
    try {
      payload = unseal(sealing.keys, objectName(sealing.kind, digest), object, CHUNK_HEADER);
    } catch (e) {
      throw new ChunkCorruptError(digest, (e as Error).message);
    }
  } else {
    payload = object.subarray(CHUNK_HEADER);
  }
  // a payload that does not shrink is stored plain, so no payload is longer than its plaintext
  if (payload.length > plainLength) throw new ChunkCorruptError(digest, `payload of ${payload.length} bytes is longer than its plaintext (${plainLength})`);
  let plain: Buffer;
  try {
    plain = decompress(codecName(object[5]!), payload, plainLength);
  } catch (e) {
    throw new ChunkCorruptError(digest, (e as Error).message);
  }
  const actual = contentDigest(sealing?.keys ?? null, plain);
  if (actual !== digest) throw new ChunkCorruptError(digest, sealing ? 'content does not match its keyed name' : `content hashes to ${actual}`);
  return plain;
}
