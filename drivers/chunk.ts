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

export const CHUNK_MAGIC = Buffer.from('BGCK');
export const CHUNK_VERSION = 1;
export const CHUNK_HEADER = 12;
export const DIGEST_BYTES = 32;
export const MIN_CHUNK = 64 * 1024;
export const MAX_CHUNK = 16 * 1024 * 1024;
export const DEFAULT_CHUNK = 4 * 1024 * 1024;

export class ChunkCorruptError extends Error {
  constructor(readonly digest: string, detail: string) {
    super(`chunk ${digest} is corrupt: ${detail}`);
    this.name = 'ChunkCorruptError';
  }
}

export function checkChunkSize(n: number): number {
  if (!Number.isInteger(n) || n < MIN_CHUNK || n > MAX_CHUNK || (n & (n - 1)) !== 0) {
    throw new Error(`chunk size ${n} is not a power of two between 64K and 16M`);
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

export function encodeChunk(plain: Buffer, codec: CodecName): EncodedChunk {
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
  return { object: Buffer.concat([header, payload]), codec: used };
}

/** Decodes a chunk object and verifies that its plaintext hashes to `digest` (hex). */
export function decodeChunk(object: Buffer, digest: string): Buffer {
  if (object.length < CHUNK_HEADER || !object.subarray(0, 4).equals(CHUNK_MAGIC)) {
    throw new ChunkCorruptError(digest, 'bad header magic');
  }
  if (object[4] !== CHUNK_VERSION) throw new ChunkCorruptError(digest, `unsupported format version ${object[4]}`);
  if (object[6] !== 0) throw new ChunkCorruptError(digest, 'encrypted chunk but the repository has no key');
  const plainLength = object.readUInt32BE(8);
  if (plainLength > MAX_CHUNK) throw new ChunkCorruptError(digest, `plaintext length ${plainLength} too large`);
  // a payload that does not shrink is stored plain, so no payload is longer than its plaintext
  if (object.length - CHUNK_HEADER > plainLength) throw new ChunkCorruptError(digest, `payload of ${object.length - CHUNK_HEADER} bytes is longer than its plaintext (${plainLength})`);
  let plain: Buffer;
  try {
    plain = decompress(codecName(object[5]!), object.subarray(CHUNK_HEADER), plainLength);
  } catch (e) {
    throw new ChunkCorruptError(digest, (e as Error).message);
  }
  const actual = sha256(plain).toString('hex');
  if (actual !== digest) throw new ChunkCorruptError(digest, `content hashes to ${actual}`);
  return plain;
}
