/**
 * Partition tables of a disk image: MBR (primary, extended and logical partitions, and the
 * protective MBR of a GPT disk) and GPT (header and entries, both CRC-checked, falling back
 * to the backup header at the end of the disk when the primary one is damaged; 512- and
 * 4096-byte sectors). Reads go through a callback, so any block device can be parsed.
 *
 * Partitions are numbered as Linux numbers them (/dev/sdaN): MBR primaries 1-4 by slot,
 * logical partitions from 5 in chain order; GPT by entry slot + 1.
 */
import zlib from 'node:zlib';

export interface Partition {
  /** the Linux partition number */
  number: number;
  /** bytes from the start of the disk */
  offset: number;
  /** bytes */
  size: number;
  /** MBR type byte ("0x83") or GPT type GUID (upper case) */
  type: string;
  /** a readable name of the type when known ("Linux filesystem", "EFI System", ...) */
  typeName?: string;
  /** GPT partition name */
  name?: string;
  /** GPT unique partition GUID */
  guid?: string;
  bootable?: boolean;
}

export interface PartitionTable {
  scheme: 'none' | 'mbr' | 'gpt';
  sectorSize: number;
  partitions: Partition[];
  /** GPT disk GUID */
  diskGuid?: string;
  /** what was wrong but could be worked around (damaged primary GPT, partitions past the end, ...) */
  warnings: string[];
}

export type ReadAt = (offset: number, length: number) => Promise<Buffer>;

const MBR_TYPES: Record<number, string> = {
  0x01: 'FAT12',
  0x04: 'FAT16 <32M',
  0x05: 'Extended',
  0x06: 'FAT16',
  0x07: 'HPFS/NTFS/exFAT',
  0x0b: 'W95 FAT32',
  0x0c: 'W95 FAT32 (LBA)',
  0x0e: 'W95 FAT16 (LBA)',
  0x0f: 'W95 Extended (LBA)',
  0x82: 'Linux swap',
  0x83: 'Linux',
  0x85: 'Linux extended',
  0x8e: 'Linux LVM',
  0xa5: 'FreeBSD',
  0xee: 'GPT protective',
  0xef: 'EFI System',
  0xfd: 'Linux raid autodetect',
};
const EXTENDED = new Set([0x05, 0x0f, 0x85]);

const GPT_TYPES: Record<string, string> = {
  'C12A7328-F81F-11D2-BA4B-00A0C93EC93B': 'EFI System',
  '21686148-6449-6E6F-744E-656564454649': 'BIOS boot',
  '0FC63DAF-8483-4772-8E79-3D69D8477DE4': 'Linux filesystem',
  '0657FD6D-A4AB-43C4-84E5-0933C84B4F4F': 'Linux swap',
  'E6D6D379-F507-44C2-A23C-238F2A3DF928': 'Linux LVM',
  'A19D880F-05FC-4D3B-A006-743F0F84911E': 'Linux RAID',
  '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709': 'Linux root (x86-64)',
  '933AC7E1-2EB4-4F13-B844-0E14E2AEF915': 'Linux home',
  'BC13C2FF-59E6-4262-A352-B275FD6F7172': 'Linux extended boot',
  'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7': 'Microsoft basic data',
  'E3C9E316-0B5C-4DB8-817D-F92DF00215AE': 'Microsoft reserved',
  'DE94BBA4-06D1-4D40-A16A-BFD50179D6AC': 'Windows recovery',
  '6A898CC3-1DD2-11B2-99A6-080020736631': 'ZFS',
};

/** Node >= 20.15 has zlib.crc32; a table-driven fallback for older ones. */
const crc32: (data: Buffer) => number =
  typeof (zlib as { crc32?: unknown }).crc32 === 'function'
    ? (data) => (zlib as unknown as { crc32(d: Buffer): number }).crc32(data) >>> 0
    : (() => {
        const table = new Uint32Array(256);
        for (let n = 0; n < 256; n++) {
          let c = n;
          for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
          table[n] = c >>> 0;
        }
        return (data: Buffer) => {
          let c = 0xffffffff;
          for (const b of data) c = table[(c ^ b) & 0xff]! ^ (c >>> 8);
          return (c ^ 0xffffffff) >>> 0;
        };
      })();

/** GUIDs are stored mixed-endian: the first three fields little-endian. */
export function formatGuid(b: Buffer): string {
  const hex = (x: Buffer) => x.toString('hex');
  const le = (x: Buffer) => hex(Buffer.from(x).reverse());
  return `${le(b.subarray(0, 4))}-${le(b.subarray(4, 6))}-${le(b.subarray(6, 8))}-${hex(b.subarray(8, 10))}-${hex(b.subarray(10, 16))}`.toUpperCase();
}

function u64(b: Buffer, off: number): number {
  const v = b.readBigUInt64LE(off);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}

interface MbrEntry {
  slot: number;
  status: number;
  type: number;
  start: number;
  sectors: number;
}

function mbrEntries(sector: Buffer): MbrEntry[] | null {
  if (sector.length < 512 || sector[510] !== 0x55 || sector[511] !== 0xaa) return null;
  const out: MbrEntry[] = [];
  for (let slot = 0; slot < 4; slot++) {
    const e = sector.subarray(446 + slot * 16, 446 + (slot + 1) * 16);
    const status = e[0]!;
    // a boot sector of a filesystem (FAT, NTFS) also ends in 55 AA; its "entries" are code
    if (status !== 0 && status !== 0x80) return null;
    out.push({ slot, status, type: e[4]!, start: e.readUInt32LE(8), sectors: e.readUInt32LE(12) });
  }
  return out;
}

/**
 * Reads the partition table of a disk of `size` bytes. A disk with no (valid) table gives
 * scheme "none" and no partitions; a damaged table never throws, it gives warnings.
 */
export async function readPartitionTable(read: ReadAt, size: number): Promise<PartitionTable> {
  const none = (warnings: string[] = []): PartitionTable => ({ scheme: 'none', sectorSize: 512, partitions: [], warnings });
  if (size < 512) return none();
  const mbr = mbrEntries(await read(0, 512));
  if (!mbr) return none();
  if (mbr.some((e) => e.type === 0xee)) {
    const gpt = await readGpt(read, size);
    if (gpt) return gpt;
    // a protective MBR with no readable GPT behind it: nothing we can trust
    return none(['protective MBR found but no valid GPT header (primary or backup)']);
  }
  const used = mbr.filter((e) => e.type !== 0 && e.sectors > 0);
  if (!used.length) return none();
  // a real MBR's partitions start after sector 0 and do not overlap each other
  const sorted = [...used].sort((a, b) => a.start - b.start);
  if (sorted[0]!.start === 0) return none();
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i]!.start < sorted[i - 1]!.start + sorted[i - 1]!.sectors) return none(['MBR partitions overlap: not a partition table']);
  }
  return readMbr(read, size, mbr);
}

/** A partition's length cut to the disk, or null when it starts past the end; says so in warnings. */
function fitToDisk(number: number, offset: number, bytes: number, diskSize: number, warnings: string[]): number | null {
  if (offset >= diskSize) {
    warnings.push(`partition ${number} starts past the end of the disk; left out`);
    return null;
  }
  if (offset + bytes > diskSize) {
    warnings.push(`partition ${number} ends past the end of the disk; cut to the disk size`);
    return diskSize - offset;
  }
  return bytes;
}

async function readMbr(read: ReadAt, size: number, entries: MbrEntry[]): Promise<PartitionTable> {
  const ss = 512;
  const warnings: string[] = [];
  const partitions: Partition[] = [];
  const add = (number: number, start: number, sectors: number, type: number, bootable: boolean) => {
    const offset = start * ss;
    const bytes = fitToDisk(number, offset, sectors * ss, size, warnings);
    if (bytes === null) return;
    partitions.push({ number, offset, size: bytes, type: `0x${type.toString(16).padStart(2, '0')}`, typeName: MBR_TYPES[type], bootable });
  };
  let extended: MbrEntry | undefined;
  for (const e of entries) {
    if (e.type === 0 || e.sectors === 0) continue;
    if (EXTENDED.has(e.type)) {
      extended ??= e;
      continue;
    }
    add(e.slot + 1, e.start, e.sectors, e.type, e.status === 0x80);
  }
  if (extended) {
    // logical partitions: a chain of EBRs, each naming one partition (relative to itself)
    // and the next EBR (relative to the start of the extended partition)
    const base = extended.start;
    let ebr = base;
    const seen = new Set<number>();
    for (let number = 5; number < 5 + 256; ) {
      if (seen.has(ebr) || ebr * ss + 512 > size) {
        if (seen.has(ebr)) warnings.push('extended partition chain loops; stopped');
        else warnings.push('extended partition chain points past the end of the disk; stopped');
        break;
      }
      seen.add(ebr);
      const list = mbrEntries(await read(ebr * ss, 512));
      if (!list) {
        warnings.push(`no valid EBR at sector ${ebr}; logical partitions stop there`);
        break;
      }
      const [part, next] = [list[0]!, list[1]!];
      if (part.type !== 0 && part.sectors > 0) add(number++, ebr + part.start, part.sectors, part.type, part.status === 0x80);
      if (next.type === 0 || next.sectors === 0 || !EXTENDED.has(next.type)) break;
      ebr = base + next.start;
    }
  }
  partitions.sort((a, b) => a.number - b.number);
  return { scheme: 'mbr', sectorSize: ss, partitions, warnings };
}

interface GptHeader {
  myLba: number;
  alternateLba: number;
  firstUsable: number;
  lastUsable: number;
  diskGuid: string;
  entriesLba: number;
  entryCount: number;
  entrySize: number;
  entriesCrc: number;
}

/** Parses and checks a GPT header sector; returns why it is not valid. */
function parseGptHeader(sector: Buffer): GptHeader | string {
  if (sector.subarray(0, 8).toString('latin1') !== 'EFI PART') return 'no "EFI PART" signature';
  const headerSize = sector.readUInt32LE(12);
  if (headerSize < 92 || headerSize > sector.length) return `bad header size ${headerSize}`;
  const hdr = Buffer.from(sector.subarray(0, headerSize));
  const want = hdr.readUInt32LE(16);
  hdr.writeUInt32LE(0, 16);
  if (crc32(hdr) !== want) return 'header CRC mismatch';
  const entryCount = sector.readUInt32LE(80);
  const entrySize = sector.readUInt32LE(84);
  if (entrySize < 128 || entrySize % 8 !== 0 || entryCount === 0 || entryCount * entrySize > 4 * 1024 * 1024) {
    return `bad entry array (${entryCount} entries of ${entrySize} bytes)`;
  }
  return {
    myLba: u64(sector, 24),
    alternateLba: u64(sector, 32),
    firstUsable: u64(sector, 40),
    lastUsable: u64(sector, 48),
    diskGuid: formatGuid(sector.subarray(56, 72)),
    entriesLba: u64(sector, 72),
    entryCount,
    entrySize,
    entriesCrc: sector.readUInt32LE(88),
  };
}

async function readGptAt(read: ReadAt, size: number, ss: number, lba: number): Promise<{ header: GptHeader; entries: Buffer } | string> {
  if ((lba + 1) * ss > size) return `header LBA ${lba} is past the end of the disk`;
  const header = parseGptHeader(await read(lba * ss, ss));
  if (typeof header === 'string') return header;
  if (header.myLba !== lba) return `header says it is at LBA ${header.myLba}, found at ${lba}`;
  const bytes = header.entryCount * header.entrySize;
  if (header.entriesLba * ss + bytes > size) return 'entry array is past the end of the disk';
  const entries = await read(header.entriesLba * ss, bytes);
  if (crc32(entries) !== header.entriesCrc) return 'entry array CRC mismatch';
  return { header, entries };
}

async function readGpt(read: ReadAt, size: number): Promise<PartitionTable | null> {
  for (const ss of [512, 4096]) {
    if (size < ss * 2) continue;
    const warnings: string[] = [];
    let found = await readGptAt(read, size, ss, 1);
    if (typeof found === 'string') {
      // the primary header may be damaged: try the backup one in the last sector
      const primaryWhy = found;
      const sig = (await read(ss, 8)).toString('latin1') === 'EFI PART';
      const backup = await readGptAt(read, size, ss, Math.floor(size / ss) - 1);
      if (typeof backup === 'string') {
        if (sig) return { scheme: 'none', sectorSize: ss, partitions: [], warnings: [`GPT primary header: ${primaryWhy}; backup header: ${backup}`] };
        continue;
      }
      warnings.push(`GPT primary header is damaged (${primaryWhy}); using the backup header`);
      found = backup;
    }
    const { header, entries } = found;
    const partitions: Partition[] = [];
    for (let i = 0; i < header.entryCount; i++) {
      const e = entries.subarray(i * header.entrySize, (i + 1) * header.entrySize);
      if (e.subarray(0, 16).every((b) => b === 0)) continue;
      const first = u64(e, 32);
      const last = u64(e, 40);
      const number = i + 1;
      if (last < first) {
        warnings.push(`partition ${number} ends before it starts; left out`);
        continue;
      }
      const offset = first * ss;
      const bytes = fitToDisk(number, offset, (last - first + 1) * ss, size, warnings);
      if (bytes === null) continue;
      const type = formatGuid(e.subarray(0, 16));
      const name = e.subarray(56, 128).toString('utf16le').replace(/\0.*$/s, '');
      const attrs = e.readBigUInt64LE(48);
      partitions.push({
        number,
        offset,
        size: bytes,
        type,
        typeName: GPT_TYPES[type],
        name,
        guid: formatGuid(e.subarray(16, 32)),
        bootable: (attrs & 4n) !== 0n,
      });
    }
    return { scheme: 'gpt', sectorSize: ss, partitions, diskGuid: header.diskGuid, warnings };
  }
  return null;
}
