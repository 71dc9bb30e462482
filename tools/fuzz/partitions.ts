/**
 * Fuzz target: gateway/fuse/partitions.ts readPartitionTable (MBR, EBR chains, GPT primary
 * and backup, 512/4096-byte sectors). The input is the whole disk image. The parser must
 * never throw, never read past the end of the disk, and only report partitions inside it.
 */
import zlib from 'node:zlib';
import { readPartitionTable, type PartitionTable } from '../../blockdev/partitions.js';
import { checkError, invariant, Finding, type Target } from './engine.js';
import type { Rng } from './rng.js';

const crc32 = (b: Buffer) => (zlib as unknown as { crc32(d: Buffer): number }).crc32(b) >>> 0;

function mbrEntry(disk: Buffer, sectorOff: number, slot: number, status: number, type: number, start: number, sectors: number): void {
  const e = sectorOff + 446 + slot * 16;
  disk[e] = status;
  disk[e + 4] = type;
  disk.writeUInt32LE(start >>> 0, e + 8);
  disk.writeUInt32LE(sectors >>> 0, e + 12);
  disk[sectorOff + 510] = 0x55;
  disk[sectorOff + 511] = 0xaa;
}

function mbrDisk(): Buffer {
  const d = Buffer.alloc(64 * 512);
  mbrEntry(d, 0, 0, 0x80, 0x83, 2, 10);
  mbrEntry(d, 0, 1, 0, 0x82, 12, 8);
  mbrEntry(d, 0, 2, 0, 0x05, 20, 40);
  // EBR chain: 20 -> 30
  mbrEntry(d, 20 * 512, 0, 0, 0x83, 2, 6);
  mbrEntry(d, 20 * 512, 1, 0, 0x05, 10, 20);
  mbrEntry(d, 30 * 512, 0, 0, 0x8e, 2, 8);
  return d;
}

/** Recomputes the entry array CRC and header CRC of the GPT header at `lba` (when they fit). */
export function fixGpt(d: Buffer, ss: number, lba: number): void {
  const h = lba * ss;
  if (h + 92 > d.length || d.toString('latin1', h, h + 8) !== 'EFI PART') return;
  const count = d.readUInt32LE(h + 80);
  const size = d.readUInt32LE(h + 84);
  const entriesLba = Number(d.readBigUInt64LE(h + 72));
  const start = entriesLba * ss;
  if (count * size <= 4 * 1024 * 1024 && start + count * size <= d.length) d.writeUInt32LE(crc32(d.subarray(start, start + count * size)), h + 88);
  const hs = d.readUInt32LE(h + 12);
  if (hs >= 92 && hs <= ss && h + hs <= d.length) {
    d.writeUInt32LE(0, h + 16);
    d.writeUInt32LE(crc32(d.subarray(h, h + hs)), h + 16);
  }
}

function gptDisk(ss: number, sectors: number, entries = 4): Buffer {
  const d = Buffer.alloc(ss * sectors);
  mbrEntry(d, 0, 0, 0, 0xee, 1, sectors - 1);
  const entryBytes = entries * 128;
  const entrySectors = Math.ceil(entryBytes / ss);
  const last = sectors - 1;
  const guid = (n: number) => Buffer.from(Array.from({ length: 16 }, (_, i) => (n * 17 + i) & 0xff));
  const types = ['C12A7328F81F11D2BA4B00A0C93EC93B', '0FC63DAF848347728E793D69D8477DE4'];
  const writeEntries = (at: number) => {
    for (let i = 0; i < 2; i++) {
      const e = at * ss + i * 128;
      Buffer.from(types[i]!, 'hex').copy(d, e);
      guid(i + 1).copy(d, e + 16);
      const first = 2 + entrySectors + i * 3;
      d.writeBigUInt64LE(BigInt(first), e + 32);
      d.writeBigUInt64LE(BigInt(first + 2), e + 40);
      d.writeBigUInt64LE(i === 0 ? 4n : 0n, e + 48);
      Buffer.from(`part${i}`, 'utf16le').copy(d, e + 56);
    }
  };
  const header = (lba: number, alt: number, entriesLba: number) => {
    const h = lba * ss;
    d.write('EFI PART', h, 'latin1');
    d.writeUInt32LE(0x00010000, h + 8);
    d.writeUInt32LE(92, h + 12);
    d.writeBigUInt64LE(BigInt(lba), h + 24);
    d.writeBigUInt64LE(BigInt(alt), h + 32);
    d.writeBigUInt64LE(BigInt(2 + entrySectors), h + 40);
    d.writeBigUInt64LE(BigInt(last - 1 - entrySectors), h + 48);
    guid(9).copy(d, h + 56);
    d.writeBigUInt64LE(BigInt(entriesLba), h + 72);
    d.writeUInt32LE(entries, h + 80);
    d.writeUInt32LE(128, h + 84);
    fixGpt(d, ss, lba);
  };
  writeEntries(2);
  writeEntries(last - entrySectors);
  header(1, last, 2);
  header(last, 1, last - entrySectors);
  return d;
}

const GPT_FIELDS: Array<[number, 4 | 8]> = [[12, 4], [24, 8], [32, 8], [40, 8], [48, 8], [72, 8], [80, 4], [84, 4]];
const ENTRY_FIELDS: Array<[number, 4 | 8]> = [[0, 4], [16, 4], [32, 8], [40, 8], [48, 8]];
const VALUES = [0n, 1n, 2n, 3n, 4n, 31n, 32n, 33n, 38n, 39n, 40n, 63n, 64n, 127n, 128n, 129n, 136n, 512n, 4096n, 32768n, 0xffffffffn, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n];

function put(d: Buffer, off: number, width: 4 | 8, v: bigint): void {
  if (off + width > d.length) return;
  if (width === 4) d.writeUInt32LE(Number(v & 0xffffffffn), off);
  else d.writeBigUInt64LE(v & (2n ** 64n - 1n), off);
}

export const partitionsTarget: Target = {
  name: 'partitions',
  description: 'gateway/fuse/partitions.ts readPartitionTable: MBR, EBR chains, GPT (primary, backup; 512 and 4096-byte sectors)',
  coverage: ['/gateway/fuse/partitions.'],
  maxLen: 64 * 1024,
  maxAlloc: 4 * 1024 * 1024 + 8192,
  seeds: () => [mbrDisk(), gptDisk(512, 40), gptDisk(4096, 12), gptDisk(512, 48, 16), Buffer.alloc(1024), (() => {
    const d = Buffer.alloc(2048);
    d.write('\xeb\x3c\x90MSDOS5.0', 0, 'latin1');
    d[510] = 0x55;
    d[511] = 0xaa;
    return d;
  })()],
  dictionary: [Buffer.from('EFI PART'), Buffer.from([0x55, 0xaa]), Buffer.from([0xee]), Buffer.from([0x05]), Buffer.from([0x0f]), Buffer.from([0x85])],
  mutate(input, r: Rng) {
    if (input.length < 512) return null;
    const d = Buffer.from(input);
    const ss = d.length >= 8192 && d.toString('latin1', 4096, 4104) === 'EFI PART' ? 4096 : 512;
    const sectors = Math.floor(d.length / ss);
    const hdrLba = r.chance(0.6) ? 1 : sectors - 1;
    const v = () => (r.chance(0.7) ? r.pick(VALUES) : BigInt(r.int(sectors + 4)));
    switch (r.int(6)) {
      case 0: {
        // an MBR (or EBR) entry field
        const sector = r.chance(0.7) ? 0 : r.int(sectors);
        const e = sector * 512 + 446 + r.int(4) * 16;
        if (e + 16 > d.length) return null;
        const f = r.int(4);
        if (f === 0) d[e] = r.pick([0, 0x80, 0x01]);
        else if (f === 1) d[e + 4] = r.pick([0, 0x05, 0x0f, 0x85, 0x83, 0xee, 0x07]);
        else put(d, e + (f === 2 ? 8 : 12), 4, v());
        d[sector * 512 + 510] = 0x55;
        d[sector * 512 + 511] = 0xaa;
        return d;
      }
      case 1:
      case 2: {
        // a GPT header field, CRCs fixed (mostly)
        const [off, w] = r.pick(GPT_FIELDS);
        put(d, hdrLba * ss + off, w, v());
        if (r.chance(0.9)) fixGpt(d, ss, hdrLba);
        return d;
      }
      case 3:
      case 4: {
        // a GPT entry field, CRCs fixed (mostly)
        const h = hdrLba * ss;
        if (h + 92 > d.length) return null;
        const entriesLba = Number(d.readBigUInt64LE(h + 72));
        const size = Math.max(128, d.readUInt32LE(h + 84));
        const count = Math.max(1, Math.min(64, d.readUInt32LE(h + 80)));
        const [off, w] = r.pick(ENTRY_FIELDS);
        put(d, entriesLba * ss + r.int(count) * size + off, w, v());
        if (r.chance(0.9)) fixGpt(d, ss, hdrLba);
        return d;
      }
      default: {
        // the disk grows or shrinks (the backup header is then misplaced)
        const n = r.pick([512, 1024, 4096, d.length - 512, d.length + 512, d.length - 1]);
        const out = Buffer.alloc(Math.max(0, Math.min(64 * 1024, n)));
        d.copy(out, 0, 0, Math.min(d.length, out.length));
        return out;
      }
    }
  },
  async run(input) {
    const size = input.length;
    const read = async (offset: number, length: number): Promise<Buffer> => {
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
        throw new Finding('crash', `invariant broken: read of [${offset}, +${length}) outside a disk of ${size} bytes`);
      }
      return Buffer.from(input.subarray(offset, offset + length));
    };
    let t: PartitionTable;
    try {
      t = await readPartitionTable(read, size);
    } catch (e) {
      // it never throws: every error is unclear here
      checkError(e, () => false, 'readPartitionTable');
      throw e;
    }
    invariant(t.sectorSize === 512 || t.sectorSize === 4096, `sector size ${t.sectorSize}`);
    const numbers = new Set<number>();
    for (const p of t.partitions) {
      invariant(Number.isSafeInteger(p.offset) && Number.isSafeInteger(p.size) && p.offset >= 0 && p.size > 0, `partition ${p.number}: offset ${p.offset}, size ${p.size}`);
      invariant(p.offset + p.size <= size, `partition ${p.number} [${p.offset}, +${p.size}) ends past the disk (${size})`);
      invariant(!numbers.has(p.number), `partition number ${p.number} twice`);
      numbers.add(p.number);
    }
    return t.scheme;
  },
};
