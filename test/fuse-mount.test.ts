/**
 * `blockgate mount` served by a child process, read from this one: the tree's layout,
 * sizes, times and modes; image contents against the source; EROFS for every write; the
 * tree following the catalog live; reader leases that stop `backup delete` while a file is
 * open; open files surviving renames; concurrent readers.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { cli, cliJson, sha, tmpDir, writeConfig } from './helpers/core.js';
import { cleanupUnder, cliBackup, must, partxList, requireFuse, run, startMount, waitFor, type DiskPart } from './helpers/fuse.js';

const CHUNK = 256 * 1024;

interface Setup {
  dir: string;
  data: string;
  vol: string;
  mnt: string;
  parts: DiskPart[];
}

/** a 16 MiB GPT disk with two partitions of random data, registered as volume "vol" */
async function setup(t: ExecutionContext): Promise<Setup> {
  const dir = tmpDir(t, 'bg-fuse-');
  cleanupUnder(t, dir);
  const data = path.join(dir, 'data');
  writeConfig(data, { chunkSize: CHUNK, codec: 'zstd' });
  const vol = path.join(dir, 'vol.img');
  fs.writeFileSync(vol, Buffer.alloc(16 * 1024 * 1024));
  await must('sgdisk', ['-n', '1:2048:+5M', '-c', '1:first', '-n', '2:0:+6M', '-c', '2:second', vol]);
  const parts = await partxList(vol);
  scribble(vol, parts);
  const r = await cli(data, ['volume', 'create', '--name', 'vol', '--file', vol]);
  if (r.code !== 0) throw new Error(r.stderr);
  return { dir, data, vol, mnt: path.join(dir, 'mnt'), parts };
}

/** random data in a few places of every partition (leaving the tables alone) */
function scribble(vol: string, parts: DiskPart[]): void {
  const fd = fs.openSync(vol, 'r+');
  for (const p of parts) {
    for (let i = 0; i < 3; i++) {
      const len = 100_000 + Math.floor(Math.random() * 400_000);
      const at = p.offset + Math.floor(Math.random() * (p.size - len));
      fs.writeSync(fd, Buffer.from(Array.from({ length: len }, () => Math.floor(Math.random() * 256))), 0, len, at);
    }
  }
  fs.closeSync(fd);
}

const read = (f: string) => fs.promises.readFile(f);

test('tree: volumes/<vol>/<backup>/{backup.json,disk.img,partN.img}, latest, by-id; sizes, times, modes and contents', async (t) => {
  if (!requireFuse(t)) return;
  const s = await setup(t);
  const image1 = fs.readFileSync(s.vol);
  const id1 = await cliBackup(s.data, 'vol', 'nightly');
  scribble(s.vol, s.parts);
  const image2 = fs.readFileSync(s.vol);
  const id2 = await cliBackup(s.data, 'vol', 'nightly', true);
  const id3 = await cliBackup(s.data, 'vol', 'weekly', true).catch(() => '');
  t.truthy(id3);
  const recs = await cliJson<{ id: string; created_at: string; name: string }[]>(s.data, ['backup', 'list']);
  const at = (id: string) => recs.find((r) => r.id === id)!.created_at;
  const m = await startMount(t, s.data, s.mnt);
  const V = path.join(s.mnt, 'volumes');
  t.deepEqual((await fs.promises.readdir(s.mnt)).sort(), ['by-id', 'volumes']);
  t.deepEqual(await fs.promises.readdir(V), ['vol']);
  const c1 = `nightly@${at(id1).replace(/\.\d+Z$/, 'Z').replace(/[-:]/g, '')}`;
  const c2 = `nightly@${at(id2).replace(/\.\d+Z$/, 'Z').replace(/[-:]/g, '')}`;
  t.deepEqual((await fs.promises.readdir(path.join(V, 'vol'))).sort(), [c1, c2, 'latest', 'weekly'].sort());
  t.is(await fs.promises.readlink(path.join(V, 'vol', 'latest')), 'weekly');
  t.deepEqual((await fs.promises.readdir(path.join(s.mnt, 'by-id'))).sort(), [id1, id2, id3].sort());
  t.is(await fs.promises.readlink(path.join(s.mnt, 'by-id', id1)), `../volumes/vol/${c1}`);
  t.deepEqual((await fs.promises.readdir(path.join(V, 'vol', c1))).sort(), ['backup.json', 'disk.img', 'part1.img', 'part2.img']);

  // modes, sizes, times
  const dirSt = await fs.promises.stat(path.join(V, 'vol', c1));
  t.is(dirSt.mode, 0o40555);
  t.is((await fs.promises.stat(s.mnt)).mode, 0o40555);
  const disk = await fs.promises.stat(path.join(V, 'vol', c1, 'disk.img'));
  t.is(disk.mode, 0o100444);
  t.is(disk.size, image1.length);
  t.is(disk.mtime.toISOString(), at(id1));
  t.is(dirSt.mtime.toISOString(), at(id1));
  for (const p of s.parts) {
    const st = await fs.promises.stat(path.join(V, 'vol', c2, `part${p.number}.img`));
    t.is(st.size, p.size);
    t.is(st.mode, 0o100444);
  }
  t.is((await fs.promises.lstat(path.join(V, 'vol', 'latest'))).mode & 0o170000, 0o120000);

  // contents: each backup as it was, whole and per partition, also through by-id and latest
  t.is(sha(await read(path.join(V, 'vol', c1, 'disk.img'))), sha(image1));
  t.is(sha(await read(path.join(s.mnt, 'by-id', id2, 'disk.img'))), sha(image2));
  t.is(sha(await read(path.join(V, 'vol', 'latest', 'disk.img'))), sha(image2));
  for (const p of s.parts) {
    t.is(sha(await read(path.join(V, 'vol', c1, `part${p.number}.img`))), sha(image1.subarray(p.offset, p.offset + p.size)), `part${p.number} of backup 1`);
    t.is(sha(await read(path.join(V, 'vol', c2, `part${p.number}.img`))), sha(image2.subarray(p.offset, p.offset + p.size)), `part${p.number} of backup 2`);
  }
  // odd reads: unaligned, across chunk boundaries, past the end
  const fh = await fs.promises.open(path.join(V, 'vol', c2, 'disk.img'));
  t.teardown(() => fh.close().catch(() => undefined));
  for (const [pos, len] of [
    [CHUNK - 7, 100],
    [3 * CHUNK + 1, 2 * CHUNK + 5],
    [image2.length - 10, 100],
    [image2.length + 10, 100],
  ] as const) {
    const buf = Buffer.alloc(len);
    const { bytesRead } = await fh.read(buf, 0, len, pos);
    t.is(bytesRead, Math.max(0, Math.min(len, image2.length - pos)));
    t.true(buf.subarray(0, bytesRead).equals(image2.subarray(pos, pos + bytesRead)), `read ${len} at ${pos}`);
  }

  // backup.json is the record `backup show -f json` gives
  const json = JSON.parse(await fs.promises.readFile(path.join(V, 'vol', 'weekly', 'backup.json'), 'utf8')) as Record<string, unknown>;
  t.deepEqual(json, await cliJson(s.data, ['backup', 'show', id3]));
  t.is((await fs.promises.stat(path.join(V, 'vol', 'weekly', 'backup.json'))).mode, 0o100444);
  t.regex(m.output(), /mounted the catalog/);
});

test('every write fails with EROFS', async (t) => {
  if (!requireFuse(t)) return;
  const s = await setup(t);
  await cliBackup(s.data, 'vol', 'b1');
  await startMount(t, s.data, s.mnt);
  const b = path.join(s.mnt, 'volumes', 'vol', 'b1');
  const disk = path.join(b, 'disk.img');
  const attempts: [string, () => Promise<unknown>][] = [
    ['open for writing', () => fs.promises.open(disk, 'r+')],
    ['append', () => fs.promises.appendFile(disk, 'x')],
    ['create a file', () => fs.promises.writeFile(path.join(b, 'new.txt'), 'x')],
    ['create in the root', () => fs.promises.writeFile(path.join(s.mnt, 'x'), 'x')],
    ['mkdir', () => fs.promises.mkdir(path.join(s.mnt, 'volumes', 'newdir'))],
    ['rmdir', () => fs.promises.rmdir(b)],
    ['unlink', () => fs.promises.unlink(disk)],
    ['unlink a symlink', () => fs.promises.unlink(path.join(s.mnt, 'volumes', 'vol', 'latest'))],
    ['rename', () => fs.promises.rename(disk, path.join(b, 'other.img'))],
    ['chmod', () => fs.promises.chmod(disk, 0o666)],
    ['utimes', () => fs.promises.utimes(disk, new Date(), new Date())],
    ['truncate', () => fs.promises.truncate(disk, 0)],
    ['symlink', () => fs.promises.symlink('disk.img', path.join(b, 'link'))],
    ['link', () => fs.promises.link(disk, path.join(b, 'hard'))],
  ];
  for (const [what, fn] of attempts) {
    const e = await t.throwsAsync(fn, undefined, what);
    t.is((e as NodeJS.ErrnoException | undefined)?.code, 'EROFS', what);
  }
  // and nothing changed
  t.deepEqual((await fs.promises.readdir(b)).sort(), ['backup.json', 'disk.img', 'part1.img', 'part2.img']);
  t.is(sha(await read(disk)), sha(fs.readFileSync(s.vol)));
});

test('the tree follows the catalog; delete is refused while a file is open; deleted backups disappear', async (t) => {
  if (!requireFuse(t)) return;
  const s = await setup(t);
  const image1 = fs.readFileSync(s.vol);
  const id1 = await cliBackup(s.data, 'vol', 'nightly');
  const m = await startMount(t, s.data, s.mnt);
  const V = path.join(s.mnt, 'volumes', 'vol');
  t.deepEqual((await fs.promises.readdir(V)).sort(), ['latest', 'nightly']);

  // hold an image open, then make a second "nightly": the first one's directory is renamed
  const fh = await fs.promises.open(path.join(V, 'nightly', 'part2.img'));
  let open = true;
  t.teardown(() => (open ? fh.close().catch(() => undefined) : undefined));
  scribble(s.vol, s.parts);
  const id2 = await cliBackup(s.data, 'vol', 'nightly', true);
  const names = await waitFor('the new backup to appear', async () => {
    const n = (await fs.promises.readdir(V)).sort();
    return n.length === 3 ? n : undefined;
  });
  t.true(names.every((n) => n === 'latest' || n.startsWith('nightly@')), names.join());
  await t.throwsAsync(fs.promises.stat(path.join(V, 'nightly')), { code: 'ENOENT' });
  const p2 = s.parts[1]!;
  const whole = await fh.readFile();
  t.is(sha(whole), sha(image1.subarray(p2.offset, p2.offset + p2.size)), 'the open file still reads the first backup');

  // delete refuses while the file is open, says who holds it
  const refused = await cli(s.data, ['backup', 'delete', id1]);
  t.is(refused.code, 4, refused.stderr);
  t.regex(refused.stderr, /attached \(fuse mount .*mnt \(pid \d+\)\)/);
  await fh.close();
  open = false;
  await waitFor('the lease to go', async () => (await cli(s.data, ['backup', 'delete', id1])).code === 0);
  await waitFor('the deleted backup to disappear', async () => (await fs.promises.readdir(path.join(s.mnt, 'by-id'))).join() === id2);
  t.deepEqual((await fs.promises.readdir(V)).sort(), ['latest', 'nightly']);
  t.is(await fs.promises.readlink(path.join(V, 'latest')), 'nightly');
  await t.throwsAsync(fs.promises.stat(path.join(s.mnt, 'by-id', id1)), { code: 'ENOENT' });
  // a volume with no backups is an empty directory; a new volume shows up
  fs.writeFileSync(path.join(s.dir, 'v2.img'), Buffer.alloc(1024 * 1024, 1));
  t.is((await cli(s.data, ['volume', 'create', '--name', 'second.volume', '--file', path.join(s.dir, 'v2.img')])).code, 0);
  await waitFor('the new volume', async () => (await fs.promises.readdir(path.join(s.mnt, 'volumes'))).includes('second.volume'));
  t.deepEqual(await fs.promises.readdir(path.join(s.mnt, 'volumes', 'second.volume')), []);
  t.is(m.child.exitCode, null);
});

test('concurrent readers in several processes all read the right bytes', async (t) => {
  if (!requireFuse(t)) return;
  const s = await setup(t);
  const image = fs.readFileSync(s.vol);
  await cliBackup(s.data, 'vol', 'b1');
  await startMount(t, s.data, s.mnt, ['--read-ahead', '2']);
  const b = path.join(s.mnt, 'volumes', 'vol', 'b1');
  const files = ['disk.img', 'disk.img', 'disk.img', 'part1.img', 'part2.img', 'part2.img'];
  const sums = await Promise.all(files.map((f) => must('sha256sum', [path.join(b, f)]).then((r) => r.stdout.split(' ')[0])));
  const want = (f: string) => {
    if (f === 'disk.img') return sha(image);
    const p = s.parts[Number(f[4]) - 1]!;
    return sha(image.subarray(p.offset, p.offset + p.size));
  };
  t.deepEqual(sums, files.map(want));
  // random reads with dd from several processes at once
  const reads = await Promise.all(
    Array.from({ length: 8 }, (_, i) => {
      const skip = (i * 37) % 60;
      const cmd = `dd if='${path.join(b, 'disk.img')}' bs=64k skip=${skip} count=3 status=none | sha256sum`;
      return run('bash', ['-c', cmd]).then((r) => ({ skip, out: r }));
    }),
  );
  for (const { skip, out } of reads) {
    t.is(out.code, 0);
    t.is(out.stdout.split(' ')[0], sha(image.subarray(skip * 65536, (skip + 3) * 65536)));
  }
});

test('a second mount on a live mount point is refused; umount of something not mounted says so', async (t) => {
  if (!requireFuse(t)) return;
  const s = await setup(t);
  await startMount(t, s.data, s.mnt);
  const again = await cli(s.data, ['mount', s.mnt]);
  t.is(again.code, 4);
  t.regex(again.stderr, /is already mounted \(fuse\.blockgate, served by pid \d+\); run `blockgate umount/);
  const nothing = await cli(s.data, ['umount', path.join(s.dir, 'nowhere')]);
  t.is(nothing.code, 3);
  t.regex(nothing.stderr, /is not mounted/);
  // umount refuses a mount that is not blockgate's
  const other = await cli(s.data, ['umount', '/proc']);
  t.is(other.code, 4);
  t.regex(other.stderr, /not a blockgate one/);
});
