/**
 * Real filesystems through the mount: an ext4 image made with mkfs.ext4 -d, and a GPT disk
 * with an ext4 and an xfs partition, each backed up twice with files changed in between.
 * Backup -> `blockgate mount` (a child process) -> mount -o loop,ro of disk.img / partN.img
 * -> every file's checksum equals the source's, for both backups; then `blockgate browse`
 * does the same in one command, and --close (or Ctrl-C) leaves nothing mounted.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CLI, cli, writeConfig } from './helpers/core.js';
import {
  changeSourceTree,
  cleanupUnder,
  cliBackup,
  loopMount,
  loopsUnder,
  makeExt4,
  makeGptDisk,
  mountsUnder,
  must,
  placeAt,
  requireFuse,
  startMount,
  syncTree,
  treeSums,
  umount,
  waitFor,
  withPartitionRw,
  writeSourceTree,
  type DiskPart,
} from './helpers/fuse.js';
import type { BrowseState } from '../gateway/fuse/browse.js';

type Sums = Record<string, string>;

function workDir(t: ExecutionContext, prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  // teardowns run last-registered first: unmount everything, then remove the files
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  cleanupUnder(t, dir);
  return dir;
}

/** copies a tree and changes it */
function evolve(src: string, dst: string, seed: string): void {
  fs.cpSync(src, dst, { recursive: true });
  changeSourceTree(dst, seed);
}

test('ext4 image (mkfs.ext4 -d), two backups: every file of each backup reads back through mount + loop mount', async (t) => {
  if (!requireFuse(t, true)) return;
  const dir = workDir(t, 'bg-fuse-ext4-');
  const data = path.join(dir, 'data');
  writeConfig(data, { chunkSize: 256 * 1024, codec: 'zstd' });
  const src1 = path.join(dir, 'src1');
  const src2 = path.join(dir, 'src2');
  writeSourceTree(src1, 'one');
  evolve(src1, src2, 'two');
  const img = path.join(dir, 'fs.img');
  await makeExt4(img, 24, src1);
  t.is((await cli(data, ['volume', 'create', '--name', 'ext', '--file', img])).code, 0);
  const id1 = await cliBackup(data, 'ext', 'before');
  // change the files in place (a rw loop mount of the source), then an incremental
  const rw = path.join(dir, 'rw');
  fs.mkdirSync(rw);
  await must('mount', ['-o', 'loop', img, rw]);
  syncTree(src2, rw);
  await umount(rw);
  const id2 = await cliBackup(data, 'ext', 'after', true);
  const mnt = path.join(dir, 'mnt');
  await startMount(t, data, mnt);
  const want1 = await treeSums(src1);
  const want2 = await treeSums(src2);
  t.notDeepEqual(want1, want2);
  for (const [id, want] of [
    [id1, want1],
    [id2, want2],
  ] as [string, Sums][]) {
    const b = path.join(mnt, 'by-id', id);
    t.deepEqual((await fs.promises.readdir(b)).sort(), ['backup.json', 'disk.img'], 'no partition table: only the disk');
    const target = path.join(dir, `fs-${id.slice(0, 8)}`);
    await loopMount(path.join(b, 'disk.img'), target, 'ext4');
    t.deepEqual(await treeSums(target), want, `files of backup ${id}`);
    await umount(target);
  }
  // browse of a bare filesystem mounts the whole disk
  const br = path.join(dir, 'browse');
  const r = await cli(data, ['-f', 'json', 'browse', id1, br, '--detach']);
  t.is(r.code, 0, r.stderr);
  const st = JSON.parse(r.stdout) as BrowseState;
  t.deepEqual(st.mounts.map((m) => [m.image, m.fstype, m.target, m.options]), [['disk.img', 'ext4', path.join(br, 'disk'), 'ro,noload']]);
  t.deepEqual(await treeSums(path.join(br, 'disk')), want1);
  const c = await cli(data, ['browse', '--close', br]);
  t.is(c.code, 0, c.stderr);
  t.deepEqual(await mountsUnder(dir), [path.join(mnt, '') + ' (fuse.blockgate)']);
  t.false(fs.existsSync(br));
});

// ---- one GPT disk (ext4 + xfs), two backups, shared by the tests below

interface Gpt {
  data: string;
  ids: [string, string];
  want: [Sums, Sums][];
  parts: DiskPart[];
}
let gpt: Promise<Gpt> | undefined;
const gptDir = path.join(os.tmpdir(), `bg-fuse-gpt-${process.pid}`);
test.after.always(async () => {
  // what a failed test may have left: mounts (deepest first), loops, files
  for (const m of (await mountsUnder(gptDir)).map((s) => s.replace(/ \(.*\)$/, '')).sort((a, b) => b.length - a.length)) {
    await must('umount', ['-l', m]).catch(() => undefined);
  }
  for (const loop of await loopsUnder(gptDir)) await must('losetup', ['-d', loop]).catch(() => undefined);
  fs.rmSync(gptDir, { recursive: true, force: true });
});

function gptChain(): Promise<Gpt> {
  gpt ??= (async () => {
    fs.mkdirSync(gptDir, { recursive: true });
    const data = path.join(gptDir, 'data');
    writeConfig(data, { chunkSize: 1024 * 1024, codec: 'zstd' });
    const srcs = ['ext-1', 'xfs-1', 'ext-2', 'xfs-2'].map((n) => path.join(gptDir, n));
    writeSourceTree(srcs[0]!, 'ext');
    writeSourceTree(srcs[1]!, 'xfs');
    fs.rmSync(path.join(srcs[1]!, 'name with spaces.txt')); // xfs prototype files cannot name it
    evolve(srcs[0]!, srcs[2]!, 'ext2');
    evolve(srcs[1]!, srcs[3]!, 'xfs2');
    const disk = path.join(gptDir, 'disk.img');
    const parts = await makeGptDisk(disk, srcs[0]!, srcs[1]!, gptDir);
    const r = await cli(data, ['volume', 'create', '--name', 'server', '--file', disk]);
    if (r.code !== 0) throw new Error(r.stderr);
    const id1 = await cliBackup(data, 'server', 'monday');
    await withPartitionRw(disk, parts[0]!, 'ext4', path.join(gptDir, 'rw1'), (d) => syncTree(srcs[2]!, d));
    await withPartitionRw(disk, parts[1]!, 'xfs', path.join(gptDir, 'rw2'), (d) => syncTree(srcs[3]!, d));
    const id2 = await cliBackup(data, 'server', 'tuesday', true);
    const want: [Sums, Sums][] = [
      [await treeSums(srcs[0]!), await treeSums(srcs[1]!)],
      [await treeSums(srcs[2]!), await treeSums(srcs[3]!)],
    ];
    return { data, ids: [id1, id2], want, parts };
  })();
  return gpt;
}

test('GPT disk with ext4 + xfs partitions, two backups: each partition of each backup loop-mounts with the right files', async (t) => {
  if (!requireFuse(t, true)) return;
  const g = await gptChain();
  const dir = workDir(t, 'bg-fuse-gptm-');
  const mnt = path.join(dir, 'mnt');
  await startMount(t, g.data, mnt);
  for (const [i, id] of g.ids.entries()) {
    const b = path.join(mnt, 'by-id', id);
    t.deepEqual((await fs.promises.readdir(b)).sort(), ['backup.json', 'disk.img', 'part1.img', 'part2.img']);
    for (const [n, fstype] of [
      [1, 'ext4'],
      [2, 'xfs'],
    ] as const) {
      const st = await fs.promises.stat(path.join(b, `part${n}.img`));
      t.is(st.size, g.parts[n - 1]!.size);
      const target = path.join(dir, `b${i + 1}-part${n}`);
      await loopMount(path.join(b, `part${n}.img`), target, fstype);
      t.deepEqual(await treeSums(target), g.want[i]![n - 1], `backup ${i + 1} partition ${n} (${fstype})`);
    }
  }
  // all four are mounted at once (xfs twice: nouuid), then unmounted
  t.is((await mountsUnder(dir)).length, 5);
  for (const m of (await mountsUnder(dir)).filter((x) => !x.endsWith('(fuse.blockgate)'))) await umount(m.replace(/ \(.*\)$/, ''));
  // mount -o loop's loop devices free themselves (autoclear), a moment after the unmount
  await waitFor('the loop devices to be freed', async () => (await loopsUnder(mnt)).length === 0);
});

test('browse: one command mounts both filesystems of a backup; --close leaves nothing mounted', async (t) => {
  if (!requireFuse(t, true)) return;
  const g = await gptChain();
  const dir = workDir(t, 'bg-fuse-browse-');
  // both backups browsed at once, in two directories
  const results = await Promise.all(g.ids.map((id, i) => cli(g.data, ['-f', 'json', 'browse', id, path.join(dir, `b${i + 1}`), '--detach'])));
  for (const [i, r] of results.entries()) {
    t.is(r.code, 0, r.stderr);
    const st = JSON.parse(r.stdout) as BrowseState;
    t.deepEqual(
      st.mounts.map((m) => [m.image, m.fstype, m.options]),
      [
        ['part1.img', 'ext4', 'ro,noload'],
        ['part2.img', 'xfs', 'ro,norecovery,nouuid'],
      ],
    );
    t.deepEqual(st.skipped, []);
    t.regex(st.mounts[0]!.loop ?? '', /^\/dev\/loop\d+$/);
    t.deepEqual(await treeSums(path.join(dir, `b${i + 1}`, 'part1')), g.want[i]![0]);
    t.deepEqual(await treeSums(path.join(dir, `b${i + 1}`, 'part2')), g.want[i]![1]);
    // the mounts are read-only
    await t.throwsAsync(fs.promises.writeFile(path.join(dir, `b${i + 1}`, 'part1', 'x'), 'x'), { code: 'EROFS' });
  }
  // a table listing for people
  const again = await cli(g.data, ['browse', g.ids[0]!, path.join(dir, 'b1')]);
  t.is(again.code, 4);
  t.regex(again.stderr, /already an open browse/);
  for (const i of [1, 2]) {
    const c = await cli(g.data, ['browse', '--close', path.join(dir, `b${i}`)]);
    t.is(c.code, 0, c.stderr);
    t.regex(c.stdout, /closed browse/);
  }
  t.deepEqual(await mountsUnder(dir), []);
  t.deepEqual(await loopsUnder(dir), []);
  t.deepEqual(fs.readdirSync(dir), [], 'browse removes the directories it made');
});

test('browse in the foreground: prints where each filesystem is; Ctrl-C undoes everything', async (t) => {
  if (!requireFuse(t, true)) return;
  const g = await gptChain();
  const dir = workDir(t, 'bg-fuse-fg-');
  const br = path.join(dir, 'open');
  fs.mkdirSync(br); // an existing empty directory is used and kept
  const child = spawn(process.execPath, [CLI, '--data-dir', g.data, 'browse', 'tuesday', br], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  t.teardown(() => void child.kill('SIGKILL'));
  await waitFor(`browse output (${out})`, () => out.includes('press Ctrl-C'), 60_000);
  t.regex(out, new RegExp(`${br}/part1 {2}ext4 {2}\\(part1\\.img on /dev/loop\\d+, ro,noload\\)`));
  t.regex(out, new RegExp(`${br}/part2 {2}xfs {2}\\(part2\\.img on /dev/loop\\d+, ro,norecovery,nouuid\\)`));
  t.deepEqual(await treeSums(path.join(br, 'part2')), g.want[1]![1]);
  child.kill('SIGINT');
  t.is(await exited, 0, out);
  t.regex(out, /closed browse .* \(got SIGINT\)/);
  t.deepEqual(await mountsUnder(dir), []);
  t.deepEqual(await loopsUnder(dir), []);
  t.deepEqual(fs.readdirSync(br), []);
});

test('browse says plainly when it cannot work: not root, unknown backup, filesystems it cannot mount', async (t) => {
  if (!requireFuse(t, true)) return;
  const g = await gptChain();
  const dir = workDir(t, 'bg-fuse-bad-');
  const nobody = await must('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, CLI, '--data-dir', g.data, 'browse', 'monday', path.join(dir, 'x')]).catch((e: Error) => e.message);
  t.regex(String(nobody), /browse needs root: attaching loop devices and mounting filesystems need CAP_SYS_ADMIN/);
  const missing = await cli(g.data, ['browse', 'no-such-backup', path.join(dir, 'y')]);
  t.is(missing.code, 3);
  t.regex(missing.stderr, /backup "no-such-backup" not found/);
  t.false(fs.existsSync(path.join(dir, 'y')));
  // a disk whose partitions hold no filesystem: each is listed with the reason
  const data = path.join(dir, 'data');
  writeConfig(data, { chunkSize: 256 * 1024, codec: 'zstd' });
  const disk = path.join(dir, 'blank.img');
  fs.writeFileSync(disk, Buffer.alloc(8 * 1024 * 1024));
  await must('sgdisk', ['-n', '1:2048:+2M', '-n', '2:0:+2M', '-t', '2:8200', disk]);
  const swap = path.join(dir, 'swap.img');
  fs.writeFileSync(swap, Buffer.alloc(2 * 1024 * 1024));
  await must('mkswap', [swap]);
  placeAt(disk, 2048 * 512 + 2 * 1024 * 1024, swap);
  t.is((await cli(data, ['volume', 'create', '--name', 'blank', '--file', disk])).code, 0);
  await cliBackup(data, 'blank', 'empty');
  const br = path.join(dir, 'br');
  const r = await cli(data, ['browse', 'empty', br, '--detach']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /no filesystem could be mounted/);
  t.regex(r.stdout, /part1\.img: no filesystem signature found/);
  t.regex(r.stdout, /part2\.img \(swap\): swap space: there is nothing to mount/);
  t.is((await cli(data, ['umount', br])).code, 0, 'umount of a browse directory closes it');
  t.deepEqual(await mountsUnder(dir), []);
});
