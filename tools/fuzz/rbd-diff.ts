/**
 * Fuzz target: drivers/rbd/diff-reader.ts RbdDiffReader (rbd export-diff v1 and v2 streams).
 * The stream is cut into pieces, and the reader's options chosen, by a hash of the input, so
 * every input replays the same way. Every problem must be an RbdDiffError; what the reader
 * yields must respect the format (order, bounds, piece sizes).
 */
import { Readable } from 'node:stream';
import { RbdDiffError, RbdDiffReader, type RbdDiffReaderOptions } from '../../drivers/rbd/diff.js';
import { checkError, invariant, type Target } from './engine.js';
import { Rng, seedOf } from './rng.js';

const le32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
};
const le64 = (n: number | bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n) & (2n ** 64n - 1n));
  return b;
};
const tag = (c: string) => Buffer.from(c, 'latin1');

type Rec = { t: 'f' | 't'; name: string } | { t: 'p'; v: number } | { t: 's'; size: number } | { t: 'w'; off: number; data: Buffer } | { t: 'z'; off: number; len: number } | { t: 'e' } | { t: 'x'; tag: number; body: Buffer };

function encode(version: 1 | 2, recs: Rec[], r?: Rng): Buffer {
  const parts: Buffer[] = [Buffer.from(`rbd diff v${version}\n`, 'latin1')];
  const lie = (n: number) => (r && r.chance(0.03) ? n + r.pick([-1, 1, 8, -8, 2 ** 40]) : n);
  const len = (n: number) => (version === 2 ? [le64(lie(n))] : []);
  for (const x of recs) {
    switch (x.t) {
      case 'f':
      case 't': {
        const n = Buffer.from(x.name);
        parts.push(tag(x.t), ...len(4 + n.length), le32(n.length), n);
        break;
      }
      case 'p':
        parts.push(tag('p'), ...len(r && r.chance(0.5) ? 8 : 1), Buffer.from([x.v]));
        break;
      case 's':
        parts.push(tag('s'), ...len(8), le64(x.size));
        break;
      case 'w':
        parts.push(tag('w'), ...len(16 + x.data.length), le64(x.off), le64(x.data.length), x.data);
        break;
      case 'z':
        parts.push(tag('z'), ...len(16), le64(x.off), le64(x.len));
        break;
      case 'e':
        parts.push(tag('e'));
        break;
      case 'x':
        parts.push(Buffer.from([x.tag]), le64(x.body.length), x.body);
        break;
    }
  }
  return Buffer.concat(parts);
}

function generate(r: Rng): Buffer {
  const version = r.chance(0.5) ? 1 : 2;
  const recs: Rec[] = [];
  if (r.chance(0.5)) recs.push({ t: 'f', name: r.pick(['snap1', 'a', 'ü', 'x'.repeat(4096), 'x'.repeat(4097), '', 'a\0b']) });
  if (r.chance(0.7)) recs.push({ t: 't', name: r.pick(['snap2', 'b']) });
  if (version === 2 && r.chance(0.5)) recs.push({ t: 'p', v: r.pick([0, 1, 2]) });
  const size = r.pick([0, 512, 4096, 1 << 20, 4 << 20, 2 ** 40, 2 ** 53 - 1, 2 ** 53]);
  recs.push({ t: 's', size });
  let off = 0;
  const n = r.int(8);
  for (let i = 0; i < n; i++) {
    off += r.pick([0, 0, 1, 512, 4096, -1, -512]);
    if (off < 0) off = 0;
    if (r.chance(0.05)) off = r.pick([size, size - 1, 2 ** 53, 2 ** 63]);
    if (r.chance(0.6)) {
      const data = Buffer.alloc(r.pick([1, 7, 512, 1000]), i + 1);
      recs.push({ t: 'w', off, data });
      off += data.length;
    } else {
      const len = r.pick([1, 512, 65536, 0, 2 ** 53]);
      recs.push({ t: 'z', off, len });
      off += len;
    }
  }
  if (version === 2 && r.chance(0.2)) recs.splice(r.int(recs.length + 1), 0, { t: 'x', tag: r.pick([0x41, 0x00, 0xff]), body: Buffer.alloc(r.int(20)) });
  if (r.chance(0.1)) recs.splice(r.int(recs.length + 1), 0, r.pick<Rec>([{ t: 's', size: 4096 }, { t: 't', name: 'late' }, { t: 'e' }]));
  recs.push({ t: 'e' });
  let out = encode(version, recs, r);
  if (r.chance(0.1)) out = Buffer.concat([out, r.chance(0.5) ? tag('e') : Buffer.from('rbd diff v1\n')]);
  return out;
}

export const rbdDiffTarget: Target = {
  name: 'rbd-diff',
  description: 'drivers/rbd/diff-reader.ts RbdDiffReader: rbd export-diff v1/v2 streams',
  coverage: ['/drivers/rbd/'],
  maxLen: 64 * 1024,
  maxAlloc: 1024 * 1024,
  seeds: () => [
    encode(1, [{ t: 's', size: 1 << 20 }, { t: 'w', off: 0, data: Buffer.alloc(512, 1) }, { t: 'z', off: 4096, len: 65536 }, { t: 'e' }]),
    encode(1, [{ t: 'f', name: 'snap1' }, { t: 't', name: 'snap2' }, { t: 's', size: 4 << 20 }, { t: 'w', off: 1024, data: Buffer.alloc(512, 2) }, { t: 'e' }]),
    encode(2, [{ t: 't', name: 'snap2' }, { t: 'p', v: 1 }, { t: 's', size: 8192 }, { t: 'z', off: 0, len: 4096 }, { t: 'w', off: 4096, data: Buffer.alloc(100, 3) }, { t: 'e' }]),
    encode(2, [{ t: 's', size: 0 }, { t: 'x', tag: 0x41, body: Buffer.alloc(5) }, { t: 'e' }]),
    encode(1, [{ t: 's', size: 4096 }, { t: 'e' }]),
  ],
  dictionary: ['rbd diff v1\n', 'rbd diff v2\n', 'f', 't', 'p', 's', 'w', 'z', 'e'].map((s) => Buffer.from(s, 'latin1')),
  mutate(_input, r) {
    return r.chance(0.5) ? generate(r) : null;
  },
  async run(input) {
    const h = seedOf(input);
    const r = new Rng(h);
    const opts: RbdDiffReaderOptions = {};
    const v = r.int(4);
    if (v === 1) opts.version = 1;
    else if (v === 2) opts.version = 2;
    const piece = r.pick([0, 0, 1, 7, 4096]);
    if (piece) opts.maxPieceSize = piece;
    if (r.chance(0.3)) opts.afterEnd = 'leave';
    if (r.chance(0.5)) opts.unknownTags = 'skip';
    const maxPiece = opts.maxPieceSize ?? 1 << 20;
    const chunks: Buffer[] = [];
    for (let pos = 0; pos < input.length; ) {
      const n = 1 + r.int(r.chance(0.5) ? 16 : 8192);
      chunks.push(input.subarray(pos, pos + n));
      pos += n;
    }
    const src = Readable.from(chunks, { objectMode: false });
    const reader = new RbdDiffReader(src, opts);
    const records: string[] = [];
    let size = -1;
    let extentEnd = 0;
    let inWrite: { off: number; len: number; got: number } | null = null;
    let sawEnd = false;
    try {
      if (r.chance(0.3)) {
        const hd = await reader.header();
        invariant(Number.isSafeInteger(hd.size) && hd.size >= 0, `header size ${hd.size}`);
      }
      for await (const rec of reader) {
        invariant(!sawEnd, 'a record after the end record');
        records.push(rec.type);
        if (inWrite && rec.type !== 'data') throw new Error('unreachable');
        switch (rec.type) {
          case 'size':
            invariant(size < 0 && Number.isSafeInteger(rec.size) && rec.size >= 0, 'one valid size record');
            size = rec.size;
            break;
          case 'data': {
            invariant(size >= 0, 'data before the size record');
            invariant(rec.data.length > 0 && rec.data.length <= maxPiece, `piece of ${rec.data.length} bytes (max ${maxPiece})`);
            if (!inWrite) {
              invariant(rec.extentOffset >= extentEnd && rec.extentOffset + rec.extentLength <= size, 'write extent in order and inside the image');
              inWrite = { off: rec.extentOffset, len: rec.extentLength, got: 0 };
            }
            invariant(rec.offset === inWrite.off + inWrite.got, 'pieces are contiguous');
            inWrite.got += rec.data.length;
            invariant(inWrite.got <= inWrite.len && rec.last === (inWrite.got === inWrite.len), 'pieces add up to the extent');
            if (rec.last) {
              extentEnd = inWrite.off + inWrite.len;
              inWrite = null;
            }
            break;
          }
          case 'zero':
            invariant(size >= 0 && rec.offset >= extentEnd && rec.length > 0 && rec.offset + rec.length <= size, 'zero extent in order and inside the image');
            extentEnd = rec.offset + rec.length;
            break;
          case 'end':
            invariant(size >= 0, 'end before the size record');
            sawEnd = true;
            break;
          default:
            invariant(size < 0, `${rec.type} after the size record`);
        }
      }
      invariant(sawEnd && !inWrite, 'a diff read to its end has an end record');
    } catch (e) {
      checkError(e, (x) => x instanceof RbdDiffError, 'RbdDiffReader');
      return 'RbdDiffError';
    } finally {
      src.destroy();
    }
    return 'ok';
  },
};
