/**
 * The partition-table parser against util-linux's partx on real tables made by sgdisk (GPT)
 * and parted (MBR with logical partitions), damaged tables, and disks without a table; and
 * the naming rules of the mount's tree (unique, safe names).
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { tmpDir } from './helpers/core.js';
import { makeExt4, must, partxList, writeSourceTree } from './helpers/fuse.js';
import { readPartitionTable, type PartitionTable } from '../blockdev/partitions.js';
import { backupDirNames, buildSnapshot, safeName } from '../gateway/fuse/tree.js';
import type { BackupRecord, VolumeRecord } from '../catalog/records.js';

async function parse(file: string): Promise<PartitionTable> {
  const fd = await fs.promises.open(file, 'r');
  try {
    const size = (await fd.stat()).size;
    return await readPartitionTable(async (off, len) => {
      const buf = Buffer.alloc(len);
      await fd.read(buf, 0, len, off);
      return buf;
    }, size);
  } finally {
    await fd.close();
  }
}

function sparse(file: string, mib: number): void {
  fs.closeSync(fs.openSync(file, 'w'));
  fs.truncateSync(file, mib * 1024 * 1024);
}

const simple = (t: PartitionTable) => t.partitions.map((p) => ({ number: p.number, offset: p.offset, size: p.size }));

test('GPT made by sgdisk: partitions, names and types as partx sees them', async (t) => {
  const dir = tmpDir(t);
  const disk = path.join(dir, 'gpt.img');
  sparse(disk, 64);
  // a gap in the slots (no partition 3) keeps Linux's numbering
  await must('sgdisk', ['-n', '1:2048:+1M', '-t', '1:ef00', '-c', '1:EFI system', '-n', '2:0:+20M', '-t', '2:8300', '-c', '2:root fs', '-n', '4:0:+10M', '-t', '4:8200', disk]);
  const table = await parse(disk);
  t.is(table.scheme, 'gpt');
  t.deepEqual(table.warnings, []);
  t.deepEqual(simple(table), await partxList(disk));
  t.deepEqual(
    table.partitions.map((p) => [p.number, p.typeName, p.name]),
    [
      [1, 'EFI System', 'EFI system'],
      [2, 'Linux filesystem', 'root fs'],
      [4, 'Linux swap', ''],
    ],
  );
  const info = (await must('sgdisk', ['-i', '2', disk])).stdout;
  t.true(info.includes(`Partition unique GUID: ${table.partitions[1]!.guid}`), info);
});

test('GPT with a damaged primary header is read from the backup header; with both damaged it is refused', async (t) => {
  const dir = tmpDir(t);
  const disk = path.join(dir, 'gpt.img');
  sparse(disk, 32);
  await must('sgdisk', ['-n', '1:2048:+8M', '-n', '2:0:+8M', disk]);
  const want = await partxList(disk);
  const fd = fs.openSync(disk, 'r+');
  fs.writeSync(fd, Buffer.from([0xff]), 0, 1, 512 + 60); // inside the primary header: CRC no longer matches
  fs.closeSync(fd);
  const t1 = await parse(disk);
  t.is(t1.scheme, 'gpt');
  t.deepEqual(simple(t1), want);
  t.regex(t1.warnings.join(), /primary header is damaged \(header CRC mismatch\); using the backup/);
  // damage the backup's entry array too
  const size = fs.statSync(disk).size;
  const fd2 = fs.openSync(disk, 'r+');
  fs.writeSync(fd2, Buffer.from([0xaa]), 0, 1, size - 33 * 512 + 40);
  fs.closeSync(fd2);
  const t2 = await parse(disk);
  t.is(t2.scheme, 'none');
  t.deepEqual(t2.partitions, []);
  t.regex(t2.warnings.join(), /primary header: header CRC mismatch; backup header: entry array CRC mismatch/);
});

test('MBR made by parted: primaries, extended and logical partitions numbered as Linux does', async (t) => {
  const dir = tmpDir(t);
  const disk = path.join(dir, 'mbr.img');
  sparse(disk, 64);
  await must('parted', ['-s', disk, 'mklabel', 'msdos', 'mkpart', 'primary', 'ext4', '1MiB', '9MiB', 'set', '1', 'boot', 'on', 'mkpart', 'extended', '9MiB', '60MiB', 'mkpart', 'logical', 'ext4', '10MiB', '20MiB', 'mkpart', 'logical', 'linux-swap', '21MiB', '30MiB', 'mkpart', 'logical', 'xfs', '31MiB', '59MiB']);
  const table = await parse(disk);
  t.is(table.scheme, 'mbr');
  t.deepEqual(table.warnings, []);
  // partx also lists the extended container (2); the mount does not expose it as a file
  const want = (await partxList(disk)).filter((p) => p.number !== 2);
  t.deepEqual(simple(table), want);
  t.deepEqual(table.partitions.map((p) => p.number), [1, 5, 6, 7]);
  t.true(table.partitions[0]!.bootable);
  t.is(table.partitions[2]!.type, '0x82');
});

test('a disk without a partition table (a bare ext4 filesystem, zeros) has none', async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src');
  writeSourceTree(src, 'x');
  const img = path.join(dir, 'fs.img');
  await makeExt4(img, 8, src);
  t.deepEqual(await parse(img), { scheme: 'none', sectorSize: 512, partitions: [], warnings: [] });
  const zero = path.join(dir, 'zero.img');
  sparse(zero, 1);
  t.is((await parse(zero)).scheme, 'none');
  // a boot sector that ends in 55 AA but whose "entries" are code is not a table
  const fat = Buffer.alloc(1024 * 1024);
  fat.write('\xeb\x3c\x90MSDOS5.0', 0, 'latin1');
  fat.fill(0x37, 446, 510);
  fat[510] = 0x55;
  fat[511] = 0xaa;
  fs.writeFileSync(path.join(dir, 'fat.img'), fat);
  t.is((await parse(path.join(dir, 'fat.img'))).scheme, 'none');
});

test('partitions past the end of a (truncated) disk are cut or left out, with warnings', async (t) => {
  const dir = tmpDir(t);
  const disk = path.join(dir, 'gpt.img');
  sparse(disk, 32);
  await must('sgdisk', ['-n', '1:2048:+8M', '-n', '2:0:+8M', '-n', '3:0:+8M', disk]);
  const full = await parse(disk);
  fs.truncateSync(disk, 14 * 1024 * 1024); // the backup GPT goes too: only the primary is read
  const cut = await parse(disk);
  t.is(cut.scheme, 'gpt');
  t.deepEqual(cut.partitions.map((p) => p.number), [1, 2]);
  t.is(cut.partitions[0]!.size, full.partitions[0]!.size);
  t.is(cut.partitions[1]!.offset + cut.partitions[1]!.size, 14 * 1024 * 1024);
  t.regex(cut.warnings.join('\n'), /partition 2 ends past the end of the disk/);
  t.regex(cut.warnings.join('\n'), /partition 3 starts past the end of the disk/);
});

const rec = (id: string, name: string, created: string, status = 'available', volume = 'v1'): BackupRecord =>
  ({ id, name, created_at: created, status, volume_id: volume, volume_name: volume, size_bytes: 1024, chunk_size: 1024 }) as unknown as BackupRecord;

test('backup directory names: the name when unique, else name@time, else with an id prefix; always safe', (t) => {
  const names = backupDirNames([
    rec('aaaaaaaa-1', 'nightly', '2026-01-01T00:00:00.000Z'),
    rec('bbbbbbbb-2', 'nightly', '2026-01-02T00:00:00.000Z'),
    rec('cccccccc-3', 'weekly', '2026-01-03T00:00:00.000Z'),
    rec('dddddddd-4', '', '2026-01-04T05:06:07.890Z'),
    rec('eeeeeeee-5', 'a/b', '2026-01-05T00:00:00.000Z'),
    rec('ffffffff-6', '..', '2026-01-06T00:00:00.000Z'),
    rec('gggggggg-7', 'latest', '2026-01-07T00:00:00.000Z'),
    rec('hhhhhhhh-8', 'same', '2026-01-08T00:00:00.000Z'),
    rec('iiiiiiii-9', 'same', '2026-01-08T00:00:00.400Z'),
    rec('jjjjjjjj-10', 'x\u0000y\nz', '2026-01-09T00:00:00.000Z'),
  ]);
  t.deepEqual(Object.fromEntries(names), {
    'aaaaaaaa-1': 'nightly@20260101T000000Z',
    'bbbbbbbb-2': 'nightly@20260102T000000Z',
    'cccccccc-3': 'weekly',
    'dddddddd-4': '20260104T050607Z',
    'eeeeeeee-5': 'a_b',
    'ffffffff-6': '__',
    'gggggggg-7': 'latest@20260107T000000Z',
    'hhhhhhhh-8': 'same@20260108T000000Z-hhhhhhhh',
    'iiiiiiii-9': 'same@20260108T000000Z-iiiiiiii',
    'jjjjjjjj-10': 'x_y_z',
  });
  t.is(new Set(names.values()).size, names.size);
  t.is(safeName('é'.repeat(300)).length, 100);
});

test('tree: only readable backups, latest is the newest available, volumes with the same name stay apart', (t) => {
  const vols = [
    { id: 'v1', name: 'db', created_at: '2026-01-01T00:00:00.000Z' },
    { id: 'v2', name: 'web', created_at: '2026-01-02T00:00:00.000Z' },
  ] as VolumeRecord[];
  const backups = [
    rec('b1', 'one', '2026-01-01T01:00:00.000Z', 'available', 'v1'),
    rec('b2', 'two', '2026-01-01T02:00:00.000Z', 'available', 'v1'),
    rec('b3', 'three', '2026-01-01T03:00:00.000Z', 'creating', 'v1'),
    rec('b4', 'four', '2026-01-01T04:00:00.000Z', 'deleted', 'v1'),
    rec('b5', 'five', '2026-01-01T05:00:00.000Z', 'error', 'v1'),
    // a backup of a deleted volume that was also called "db"
    { ...rec('b6', 'old', '2025-01-01T00:00:00.000Z', 'available', 'v9'), volume_name: 'db' },
  ];
  const snap = buildSnapshot(vols, backups);
  t.deepEqual([...snap.volumes.keys()], ['db@v9', 'db', 'web']);
  t.deepEqual([...snap.volumes.get('db')!.backups.keys()], ['one', 'two']);
  t.is(snap.volumes.get('db')!.latest, 'two');
  t.is(snap.volumes.get('web')!.latest, undefined);
  t.deepEqual([...snap.byId.keys()].sort(), ['b1', 'b2', 'b6']);
});
