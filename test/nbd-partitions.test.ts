/**
 * Filters stack freely: a partition of a backup is an NBD export of its own (`NAME/partN`),
 * the partition window stacked on the backup device, read by qemu-img, nbdcopy and nbdinfo
 * bit-exact, read-only, with the same access as the whole disk.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { cliJson, sha, tmpDir, writeConfig } from './helpers/core.js';
import { run, startDaemon } from './helpers/daemon.js';

const MiB = 1024 * 1024;

test('each partition of a backup (GPT by sgdisk) is exportable over NBD and reads bit-exact with qemu-img and nbdcopy', async (t) => {
  const dir = tmpDir(t);
  const dataDir = path.join(dir, 'data');
  writeConfig(dataDir, { chunkSize: 256 * 1024 });
  const disk = path.join(dir, 'disk.img');
  fs.writeFileSync(disk, Buffer.alloc(0));
  fs.truncateSync(disk, 48 * MiB);
  await run('sgdisk', ['-n', '1:2048:+8M', '-t', '1:ef00', '-n', '2:0:+20M', '-t', '2:8300', '-n', '4:0:+5M', disk]);
  // util-linux's view of the table: number, first sector, sectors
  const parts = (await run('partx', ['-g', '-o', 'NR,START,SECTORS', disk])).stdout.trim().split('\n').map((l) => l.trim().split(/\s+/).map(Number) as [number, number, number]);
  // distinct data in every partition, up to its last byte (not a multiple of the chunk size for part 4)
  const fd = fs.openSync(disk, 'r+');
  const want = new Map<number, Buffer>();
  for (const [n, start, sectors] of parts) {
    const bytes = randomBytes(sectors * 512);
    fs.writeSync(fd, bytes, 0, bytes.length, start * 512);
    want.set(n, bytes);
  }
  fs.closeSync(fd);
  t.deepEqual([...want.keys()].sort(), [1, 2, 4]);
  await cliJson(dataDir, ['volume', 'create', '--name', 'disk', '--file', disk]);
  await cliJson(dataDir, ['backup', 'create', 'disk', '--name', 'b']);
  const d = await startDaemon(t, dataDir);

  for (const [n, bytes] of want) {
    const uri = d.uri(`disk@b/part${n}`);
    t.is(Number((await run('nbdinfo', ['--size', uri])).stdout.trim()), bytes.length, `part${n} size`);
    const out = path.join(dir, `part${n}.raw`);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, out]);
    t.is(sha(fs.readFileSync(out)), sha(bytes), `part${n} through qemu-img`);
    fs.rmSync(out);
    await run('nbdcopy', [`nbd+unix:///disk@b/part${n}?socket=${d.socket}`, out]);
    t.is(sha(fs.readFileSync(out)), sha(bytes), `part${n} through nbdcopy on the unix socket`);
  }
  // a partition is read-only, whatever the whole disk allows
  const info = JSON.parse((await run('nbdinfo', ['--json', d.uri('disk@b/part2')])).stdout) as { exports: { is_read_only: boolean }[] };
  t.true(info.exports[0]!.is_read_only);
  const write = await run('qemu-io', ['-f', 'raw', '-c', 'write 0 4096', d.uri('disk@b/part2')]).then((r) => r.stdout + r.stderr, (e: Error & { stderr?: string }) => `${e.message} ${e.stderr ?? ''}`);
  t.regex(write, /read.only|Permission denied|not permitted/i);
  // a partition that is not there, or of a backup that is not there: an unknown export
  for (const name of ['disk@b/part3', 'disk@b/part9999', 'disk@nosuch/part1', 'disk@b/part0', 'disk@b/partx']) {
    const e = await run('nbdinfo', ['--size', d.uri(name)]).catch((err: Error & { stderr?: string }) => err);
    t.true(e instanceof Error, name);
  }
  // the daemon still serves, and every backup device a partition export opened was released
  // with it (its reader lease too: the backup can be deleted once the clients are gone)
  t.is(Number((await run('nbdinfo', ['--size', d.uri('disk@b')])).stdout.trim()), 48 * MiB);
  const del = await cliJson(dataDir, ['backup', 'delete', 'b']);
  t.not(del.status, 'available');
});
