/**
 * Pack objects: many small blobs (chunk and map-page objects, each exactly as drivers/chunk.ts
 * encodes it: compressed, then sealed in an encrypted repository) appended into one large
 * object, with an index of its blobs at its end (restic's and borg 2's pack design). A pack is
 * written once, as one object with one sync, and never changed; GC deletes or repacks it whole.
 *
 *   blob 0 | blob 1 | ... | index object | index object length (u32 BE) | "BGPK"
 *
 * The index object is the index plaintext, sealed (drivers/crypto.ts sealBlob, with the pack's
 * object name as authenticated data) in an encrypted repository. Its plaintext:
 *
 *   "BGPI", version (1), 3 reserved zero bytes, entry count (u32 BE), then per blob 46 bytes:
 *   kind (u8: 0 chunk, 1 page), digest (32), offset (u32 BE), stored length (u32 BE),
 *   plaintext length (u32 BE), codec id (u8)
 *
 * Every blob carries its own header and is verified on its own against its digest, so a pack
 * whose index is damaged still has every blob readable by a location recorded elsewhere (the
 * catalog's chunk index), and a damaged blob fails alone (corruption is reported per block).
 * A pack is named `packs/<n[0:2]>/<n>`, n 64 random hex digits: the name reveals nothing.
 */
import { randomBytes } from 'node:crypto';
import { DIGEST_BYTES, KIND_ID, type ObjectKind } from './chunk.js';
import { type RepoKeys, isSealedBlob, sealBlob, unsealBlob } from './crypto.js';

export const PACK_MAGIC = Buffer.from('BGPK');
export const PACK_INDEX_MAGIC = Buffer.from('BGPI');
export const PACK_INDEX_VERSION = 1;
export const PACK_TRAILER = 8;
const INDEX_HEADER = 12;
export const PACK_ENTRY = 46;
/** no pack is larger than this (offsets are u32) */
export const MAX_PACK = 1024 * 1024 * 1024;
export const MIN_PACK = 1024 * 1024;
export const DEFAULT_PACK = 32 * 1024 * 1024;
/** a pack's index is read with one ranged read of this many bytes from its end, when it fits */
export const INDEX_PROBE = 64 * 1024;

const KINDS: ObjectKind[] = ['chunks', 'pages'];
const PACK_RE = /^[0-9a-f]{64}$/;

export interface PackEntry {
  kind: ObjectKind;
  digest: string;
  offset: number;
  length: number;
  /** plaintext length */
  plain: number;
  codec: number;
}

export class PackCorruptError extends Error {
  constructor(readonly pack: string, detail: string) {
    super(`pack ${pack} is corrupt: ${detail}`);
    this.name = 'PackCorruptError';
  }
}

export function checkPackSize(n: number): number {
  if (!Number.isInteger(n) || n < MIN_PACK || n > MAX_PACK) throw new Error(`pack size ${n} is not between 1M and 1G`);
  return n;
}

export function newPackId(): string {
  return randomBytes(32).toString('hex');
}

export function packObjectName(id: string): string {
  if (!PACK_RE.test(id)) throw new Error(`invalid pack id ${JSON.stringify(id)}`);
  return `packs/${id.slice(0, 2)}/${id}`;
}

/** the pack id of an object name under packs/, or null */
export function packIdOf(name: string): string | null {
  const m = /^packs\/[0-9a-f]{2}\/([0-9a-f]{64})$/.exec(name);
  return m && m[1]!.startsWith(name.slice(6, 8)) ? m[1]! : null;
}

export function encodePackIndex(entries: PackEntry[]): Buffer {
  const out = Buffer.alloc(INDEX_HEADER + entries.length * PACK_ENTRY);
  PACK_INDEX_MAGIC.copy(out, 0);
  out[4] = PACK_INDEX_VERSION;
  out.writeUInt32BE(entries.length, 8);
  let at = INDEX_HEADER;
  for (const e of entries) {
    out[at] = KIND_ID[e.kind];
    out.write(e.digest, at + 1, DIGEST_BYTES, 'hex');
    out.writeUInt32BE(e.offset, at + 33);
    out.writeUInt32BE(e.length, at + 37);
    out.writeUInt32BE(e.plain, at + 41);
    out[at + 45] = e.codec;
    at += PACK_ENTRY;
  }
  return out;
}

/** The entries of an index plaintext; `dataEnd`: where the blobs end (no entry reaches past it). */
export function decodePackIndex(plain: Buffer, pack: string, dataEnd = Infinity): PackEntry[] {
  if (plain.length < INDEX_HEADER || !plain.subarray(0, 4).equals(PACK_INDEX_MAGIC)) throw new PackCorruptError(pack, 'bad index magic');
  if (plain[4] !== PACK_INDEX_VERSION) throw new PackCorruptError(pack, `unsupported index version ${plain[4]}`);
  const count = plain.readUInt32BE(8);
  if (plain.length !== INDEX_HEADER + count * PACK_ENTRY) throw new PackCorruptError(pack, `index of ${plain.length} bytes does not hold ${count} entries`);
  const out: PackEntry[] = [];
  for (let i = 0, at = INDEX_HEADER; i < count; i++, at += PACK_ENTRY) {
    const kind = KINDS[plain[at]!];
    if (!kind) throw new PackCorruptError(pack, `entry ${i} has unknown kind ${plain[at]}`);
    const e: PackEntry = {
      kind,
      digest: plain.toString('hex', at + 1, at + 33),
      offset: plain.readUInt32BE(at + 33),
      length: plain.readUInt32BE(at + 37),
      plain: plain.readUInt32BE(at + 41),
      codec: plain[at + 45]!,
    };
    if (e.offset + e.length > dataEnd) throw new PackCorruptError(pack, `entry ${i} reaches past the pack's data`);
    out.push(e);
  }
  return out;
}

/**
 * Parses a pack's tail (the last bytes of the object, `tailOffset` being where they start in
 * it) into its index; returns `need` (the offset to read the tail from) when the tail is too
 * short to hold the whole index.
 */
export function parsePackTail(tail: Buffer, tailOffset: number, pack: string, keys: RepoKeys | null): { entries: PackEntry[]; indexOffset: number } | { need: number } {
  if (tail.length < PACK_TRAILER || !tail.subarray(tail.length - 4).equals(PACK_MAGIC)) throw new PackCorruptError(pack, 'bad trailer magic');
  const size = tailOffset + tail.length;
  const indexLength = tail.readUInt32BE(tail.length - PACK_TRAILER);
  const indexOffset = size - PACK_TRAILER - indexLength;
  if (indexOffset < 0) throw new PackCorruptError(pack, `index of ${indexLength} bytes is larger than the pack`);
  if (indexOffset < tailOffset) return { need: indexOffset };
  const raw = tail.subarray(indexOffset - tailOffset, tail.length - PACK_TRAILER);
  let plain: Buffer;
  if (keys) {
    try {
      plain = unsealBlob(keys, packObjectName(pack), raw);
    } catch (e) {
      throw new PackCorruptError(pack, `index: ${(e as Error).message}`);
    }
  } else {
    if (isSealedBlob(raw)) throw new PackCorruptError(pack, 'its index is encrypted, but this repository has no key');
    plain = raw;
  }
  return { entries: decodePackIndex(plain, pack, indexOffset), indexOffset };
}

/**
 * Builds one pack in memory: blobs are appended as they come; seal() adds the index and the
 * trailer and gives the whole object. Memory: the pack's size, once.
 */
/** a pack's buffer: its blobs, with room for a blob past the size and the index (46 bytes per blob of 1 KiB and more) */
export function packBufferSize(capacity: number): number {
  return capacity + Math.ceil(capacity / 16) + INDEX_PROBE;
}

export class PackBuilder {
  readonly id = newPackId();
  readonly entries: PackEntry[] = [];
  private buf: Buffer;
  private bytes = 0;

  /**
   * `capacity`: the expected size of the blobs (the buffer grows past it when it must); `buf`:
   * a buffer to reuse (a writer recycles the buffer of a pack once it is stored, so its pages
   * are not faulted in afresh for every pack)
   */
  constructor(private readonly keys: RepoKeys | null, capacity = DEFAULT_PACK, buf?: Buffer) {
    const want = packBufferSize(capacity);
    this.buf = buf && buf.length >= want ? buf : Buffer.allocUnsafe(want);
  }

  /** the buffer, for reuse once the sealed pack is stored */
  get buffer(): Buffer {
    return this.buf;
  }

  get size(): number {
    return this.bytes;
  }
  get count(): number {
    return this.entries.length;
  }

  /** appends a blob (copied); returns its entry */
  add(kind: ObjectKind, digest: string, object: Buffer, plain: number, codec: number): PackEntry {
    if (this.bytes + object.length > MAX_PACK - INDEX_PROBE) throw new Error('pack full');
    if (this.bytes + object.length > this.buf.length) {
      const grown = Buffer.allocUnsafe(Math.min(MAX_PACK, Math.max(this.buf.length * 2, this.bytes + object.length)));
      this.buf.copy(grown, 0, 0, this.bytes);
      this.buf = grown;
    }
    const e: PackEntry = { kind, digest, offset: this.bytes, length: object.length, plain, codec };
    object.copy(this.buf, this.bytes);
    this.bytes += object.length;
    this.entries.push(e);
    return e;
  }

  /** the whole pack object: blobs, index, trailer (the builder is done) */
  seal(): Buffer {
    const plain = encodePackIndex(this.entries);
    const index = this.keys ? sealBlob(this.keys, packObjectName(this.id), plain) : plain;
    const trailer = Buffer.alloc(PACK_TRAILER);
    trailer.writeUInt32BE(index.length, 0);
    PACK_MAGIC.copy(trailer, 4);
    const blobs = this.buf.subarray(0, this.bytes);
    const tail = index.length + PACK_TRAILER;
    if (this.bytes + tail <= this.buf.length) {
      index.copy(this.buf, this.bytes);
      trailer.copy(this.buf, this.bytes + index.length);
      return this.buf.subarray(0, this.bytes + tail);
    }
    return Buffer.concat([blobs, index, trailer]);
  }
}
