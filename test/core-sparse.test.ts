/**
 * Sparse file volumes: a backup reads only the chunks that hold data (SEEK_DATA/SEEK_HOLE),
 * records the holes as zero chunks, and restores bit-exact; without the helper it reads
 * every byte and restores the same.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { cli, cliJson, openApp, sha, tmpDir, writeConfig } from './helpers/core.js';
import { dataExtents, useHoleHelper } from '../drivers/volume/extents.js';
import { backup, restoreToBuffer } from './helpers/engine.js';
import { createVolume } from '../gateway/engine/volumes.js';

const CS = 64 * 1024;
const SIZE = 20 * CS + 12345;

/** a sparse file: data in chunk 0, across chunks 4|5, and in the short last chunk 20; the rest holes */
function sparseFile(file: string): Buffer {
  const whole = Buffer.alloc(SIZE);
  const fd = fs.openSync(file, 'w', 0o600);
  for (const [off, len] of [[0, 4096], [5 * CS - 4096, 8192], [20 * CS + 8192, 12345 - 8192]] as const) {
    const d = randomBytes(len);
    d.copy(whole, off);
    fs.writeSync(fd, d, 0, len, off);
  }
  fs.ftruncateSync(fd, SIZE);
  fs.closeSync(fd);
  return whole;
}

interface Shown {
  id: string;
  status: string;
  bytes_read: number;
  object_count: number;
}

async function backupOf(t: Parameters<typeof tmpDir>[0], img: string): Promise<{ data: string; b: Shown }> {
  const data = path.join(tmpDir(t), 'data');
  writeConfig(data, { chunkSize: CS });
  t.is((await cli(data, ['volume', 'create', '--name', 'v', '--file', img])).code, 0);
  const made = await cli(data, ['backup', 'create', 'v', '-f', 'json']);
  t.is(made.code, 0, made.stderr);
  const b = JSON.parse(made.stdout) as Shown;
  return { data, b };
}

test.serial('the data extents of a sparse file are listed, ascending, and cover every written byte', async (t) => {
  const img = path.join(tmpDir(t), 'sparse.img');
  const whole = sparseFile(img);
  const ext: { start: number; end: number }[] = [];
  for await (const e of dataExtents(img, SIZE)) ext.push(e);
  t.true(ext.length >= 2, JSON.stringify(ext));
  for (let i = 1; i < ext.length; i++) t.true(ext[i]!.start >= ext[i - 1]!.end);
  // every non-zero byte lies in an extent
  for (let off = 0; off < SIZE; off += 512) {
    if (whole.subarray(off, off + 512).some((x) => x !== 0)) t.true(ext.some((e) => e.start <= off && off < e.end), `byte ${off} is data`);
  }
  const allocated = ext.reduce((n, e) => n + e.end - e.start, 0);
  t.true(allocated < SIZE / 2, `allocated ${allocated} of ${SIZE}`);
});

test.serial('a backup of a sparse file reads only the chunks holding data and restores bit-exact', async (t) => {
  const img = path.join(tmpDir(t), 'sparse.img');
  const whole = sparseFile(img);
  const { data, b } = await backupOf(t, img);
  t.is(b.status, 'available');
  // chunks 0, 4, 5 whole and the short last one: nothing else was read
  t.is(b.bytes_read, 3 * CS + 12345);
  t.is(b.object_count, 4);
  const restored = async (id: string, name: string) => sha(fs.readFileSync((await cliJson<{ path: string }>(data, ['backup', 'restore', id, '--name', name])).path));
  t.is(await restored(b.id, 'r1'), sha(whole));
  // writing into a hole shows in the next backup
  const fd = fs.openSync(img, 'r+');
  const more = randomBytes(1000);
  fs.writeSync(fd, more, 0, more.length, 12 * CS + 77);
  fs.closeSync(fd);
  more.copy(whole, 12 * CS + 77);
  const made = await cli(data, ['backup', 'create', 'v', '-f', 'json']);
  t.is(made.code, 0, made.stderr);
  const b2 = JSON.parse(made.stdout) as Shown;
  t.is(b2.bytes_read, 4 * CS + 12345);
  t.is(await restored(b2.id, 'r2'), sha(whole));
});

test.serial('without the hole helper every byte is read and the backup restores the same bytes', async (t) => {
  const img = path.join(tmpDir(t), 'sparse.img');
  const whole = sparseFile(img);
  const app = await openApp(t, { chunkSize: CS });
  await createVolume(app, { name: 'v', file: img });
  useHoleHelper('/nonexistent/python3');
  let b;
  try {
    b = await backup(app, 'v');
  } finally {
    useHoleHelper();
  }
  t.is(b.status, 'available');
  t.is(b.bytes_read, SIZE);
  t.is(b.object_count, 4);
  t.is(sha(await restoreToBuffer(app, b.id)), sha(whole));
});
