/**
 * Helpers for the FUSE tests: a `blockgate mount` child process (the test process never
 * serves a mount it reads), real filesystem images (ext4 from a directory with mkfs.ext4 -d,
 * xfs from a prototype file with mkfs.xfs -p, GPT and MBR disks with sgdisk / parted),
 * read-only loop mounts, file checksums, and teardown that leaves no mount and no loop
 * device behind, even when a test fails half-way.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import type { ExecutionContext } from 'ava';
import { CLI, cli } from './core.js';
import { findMount, listMounts, run, servingPid, type RunResult } from '../../gateway/fuse/mount.js';

export { run };

export async function must(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<RunResult> {
  const r = await run(cmd, args, { timeoutMs: 120_000, env: env ? { ...process.env, ...env } : undefined });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r;
}

/** FUSE tests need root, /dev/fuse and loop devices; fail (not skip) with the reason. */
export function requireFuse(t: ExecutionContext, loop = false): boolean {
  const why =
    process.getuid?.() !== 0 ? 'not root' : !fs.existsSync('/dev/fuse') ? 'no /dev/fuse' : loop && !fs.existsSync('/dev/loop-control') ? 'no loop devices' : '';
  if (why) t.fail(`FUSE tests need root, /dev/fuse and loop devices: ${why}`);
  return !why;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** mount servers still running when this test process ends (a crash skips teardowns) are
 * killed; their auto_unmount helpers then take the mounts down */
const servers = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of servers) c.kill('SIGKILL');
});

export interface MountProc {
  child: ChildProcess;
  pid: number;
  mnt: string;
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** `blockgate mount MNT` in a child process; resolves once the mount answers. */
export async function startMount(t: ExecutionContext, dataDir: string, mnt: string, args: string[] = []): Promise<MountProc> {
  // (blockgate mount makes the mount point itself; a stale mount there is its to clear)
  const child = spawn(process.execPath, [CLI, '--data-dir', dataDir, 'mount', mnt, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let done = false;
  servers.add(child);
  void exited.then(() => {
    done = true;
    servers.delete(child);
  });
  t.teardown(async () => {
    if (!done) {
      child.kill('SIGTERM');
      await Promise.race([exited, sleep(5000)]);
      if (!done) child.kill('SIGKILL');
    }
    await clearMount(mnt);
  });
  await waitFor(`mount of ${mnt} (output: ${out})`, async () => {
    if (done) throw new Error(`blockgate mount exited early: ${out}`);
    const m = await findMount(mnt);
    return m && servingPid(m) === child.pid && out.includes('mounted');
  }, 60_000); // a loaded machine (and an encrypted repository's key derivation) can take a while
  return { child, pid: child.pid!, mnt, output: () => out, exited };
}

/** the fusermount helper that auto_unmount leaves next to a mount process */
export async function helperOf(pid: number): Promise<number | undefined> {
  return childOf(pid, 'fusermount');
}

/** the mount watchdog (gateway/fuse/watchdog.ts) of a mount server */
export async function watchdogOf(pid: number): Promise<number | undefined> {
  return childOf(pid, 'python3');
}

async function childOf(pid: number, name: string): Promise<number | undefined> {
  const r = await run('pgrep', ['-P', String(pid), name]);
  const n = Number(r.stdout.trim().split('\n')[0]);
  return n > 0 ? n : undefined;
}

/** lazily detaches whatever is mounted at mnt (teardown; never throws) */
export async function clearMount(mnt: string): Promise<void> {
  // umount -l --no-canonicalize never looks at the mount (a hung one would block)
  for (let i = 0; i < 5 && (await findMount(mnt)); i++) {
    const r = await run('umount', ['-l', '--no-canonicalize', mnt]);
    if (r.code !== 0) await run('fusermount', ['-u', '-z', mnt]);
  }
}

/** mounts under dir (the dir itself included) */
export async function mountsUnder(dir: string): Promise<string[]> {
  const d = path.resolve(dir);
  return (await listMounts()).filter((m) => m.mountPoint === d || m.mountPoint.startsWith(d + '/')).map((m) => `${m.mountPoint} (${m.fstype})`);
}

/** loop devices whose backing file is under dir */
export async function loopsUnder(dir: string): Promise<string[]> {
  const r = await run('losetup', ['--list', '--noheadings', '--raw', '-O', 'NAME,BACK-FILE']);
  return r.stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => [l.slice(0, l.indexOf(' ')), l.slice(l.indexOf(' ') + 1).replace(/\\x([0-9a-f]{2})/gi, (_, h: string) => String.fromCharCode(parseInt(h, 16)))] as const)
    .filter(([, back]) => back.startsWith(path.resolve(dir) + '/'))
    .map(([dev]) => dev);
}

/** teardown for a whole test directory: browses opened in it, the servers of blockgate mounts
 * under it, then every mount under it (deepest first) and every loop device on it */
export function cleanupUnder(t: ExecutionContext, dir: string): void {
  t.teardown(async () => {
    for (const m of await listMounts()) {
      if (!m.mountPoint.startsWith(path.resolve(dir) + '/') || m.fstype !== 'fuse.blockgate') continue;
      if (path.basename(m.mountPoint) === '.fuse') await cli(dir, ['browse', '--close', path.dirname(m.mountPoint)]);
      const pid = servingPid(m);
      if (pid && (await findMount(m.mountPoint))) {
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          /* gone */
        }
        await waitFor('the mount server to stop', async () => !(await findMount(m.mountPoint)), 5000).catch(() => undefined);
      }
    }
    for (let round = 0; round < 3; round++) {
      const mounts = (await listMounts()).filter((m) => m.mountPoint.startsWith(path.resolve(dir) + '/')).map((m) => m.mountPoint);
      if (!mounts.length) break;
      for (const m of mounts.sort((a, b) => b.length - a.length)) {
        const r = await run('umount', ['-l', '--no-canonicalize', m]);
        if (r.code !== 0) await run('fusermount', ['-u', '-z', m]);
      }
    }
    for (const loop of await loopsUnder(dir)) await run('losetup', ['-d', loop]);
  });
}

/** mount -o loop,ro,... file target (with the journal options browse uses) */
export async function loopMount(file: string, target: string, fstype: 'ext4' | 'xfs'): Promise<void> {
  fs.mkdirSync(target, { recursive: true });
  const opts = fstype === 'ext4' ? 'loop,ro,noload' : 'loop,ro,norecovery,nouuid';
  await must('mount', ['-t', fstype, '-o', opts, file, target]);
}

export async function umount(target: string): Promise<void> {
  const r = await run('umount', [target]);
  if (r.code !== 0) await must('umount', ['-l', target]);
}

// ---- source trees and images

export async function fileSha(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1024 * 1024 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** relative path -> sha256 of every regular file under dir (lost+found left out) */
export async function treeSums(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string) => {
    for (const e of await fs.promises.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      const rel = path.relative(dir, p);
      if (rel === 'lost+found') continue;
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) out[rel] = await fileSha(p);
    }
  };
  await walk(dir);
  return out;
}

/** a directory of known files: text, binary that spans chunks, nested dirs, odd names, empty */
export function writeSourceTree(dir: string, seed: string): void {
  const put = (rel: string, data: Buffer | string) => {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), data);
  };
  put('etc/hostname', `host-${seed}\n`);
  put('etc/app.conf', `# config ${seed}\nlisten = 0.0.0.0:8080\nworkers = 4\n`.repeat(50));
  put('data/random.bin', randomBytes(1536 * 1024 + 123));
  put('data/zeros.bin', Buffer.alloc(300 * 1024));
  put('data/deep/er/still/file.txt', `deep ${seed}\n`);
  put('name with spaces.txt', 'spaces\n');
  put('empty', '');
}

/** changes some files, adds one, removes one */
export function changeSourceTree(dir: string, seed: string): void {
  fs.writeFileSync(path.join(dir, 'etc/hostname'), `host-${seed}-changed\n`);
  const bin = fs.readFileSync(path.join(dir, 'data/random.bin'));
  randomBytes(8192).copy(bin, 700 * 1024);
  fs.writeFileSync(path.join(dir, 'data/random.bin'), bin);
  fs.writeFileSync(path.join(dir, `new-${seed}.txt`), randomBytes(40 * 1024).toString('base64'));
  fs.rmSync(path.join(dir, 'data/zeros.bin'));
}

/** copies a tree into a mounted filesystem, replacing what is there (but lost+found) */
export function syncTree(src: string, dst: string): void {
  for (const e of fs.readdirSync(dst)) if (e !== 'lost+found') fs.rmSync(path.join(dst, e), { recursive: true, force: true });
  fs.cpSync(src, dst, { recursive: true });
}

/** an ext4 filesystem made from a directory, in a file or at an offset of a disk image */
export async function makeExt4(file: string, sizeMiB: number, src: string, offsetBytes = 0): Promise<void> {
  const args = ['-q', '-F', '-t', 'ext4', '-d', src];
  if (offsetBytes) args.push('-E', `offset=${offsetBytes}`);
  else fs.writeFileSync(file, '');
  await must('mkfs.ext4', [...args, file, `${sizeMiB * 1024}k`]);
}

/** an xfs filesystem made from a directory (mkfs.xfs -p prototype file) */
export async function makeXfs(file: string, sizeMiB: number, src: string): Promise<void> {
  const lines = ['blockgate-test', '0 0', 'd--755 0 0'];
  const walk = (d: string, depth: number) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      if (/\s/.test(e.name)) throw new Error(`xfs prototype files cannot name "${e.name}"`);
      const p = path.join(d, e.name);
      const pad = ' '.repeat(depth);
      if (e.isDirectory()) {
        lines.push(`${pad}${e.name} d--755 0 0`);
        walk(p, depth + 1);
        lines.push(`${pad}$`);
      } else lines.push(`${pad}${e.name} ---644 0 0 ${p}`);
    }
  };
  walk(src, 1);
  lines.push('$');
  const proto = `${file}.proto`;
  fs.writeFileSync(proto, lines.join('\n') + '\n');
  fs.rmSync(file, { force: true });
  fs.closeSync(fs.openSync(file, 'w'));
  fs.truncateSync(file, sizeMiB * 1024 * 1024);
  // xfsprogs refuses filesystems under 300 MB outside its own test suite's environment
  await must('mkfs.xfs', ['-q', '-f', '-p', proto, file], { TEST_DIR: '1', TEST_DEV: '1', QA_CHECK_FS: '1' });
  fs.rmSync(proto);
}

/** copies a file into a disk image at an offset */
export function placeAt(disk: string, offset: number, file: string): void {
  const fd = fs.openSync(disk, 'r+');
  const data = fs.readFileSync(file);
  fs.writeSync(fd, data, 0, data.length, offset);
  fs.closeSync(fd);
}

export interface DiskPart {
  number: number;
  offset: number;
  size: number;
}

/** the partitions of a disk image as util-linux's partx sees them */
export async function partxList(disk: string): Promise<DiskPart[]> {
  const r = await must('partx', ['-b', '-g', '-o', 'NR,START,SECTORS', disk]);
  return r.stdout
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => l.trim().split(/\s+/).map(Number))
    .map(([nr, start, sectors]) => ({ number: nr!, offset: start! * 512, size: sectors! * 512 }));
}

/**
 * A GPT disk with an ext4 partition (1) and an xfs partition (2), each made from its own
 * source tree. Returns the partitions.
 */
export async function makeGptDisk(disk: string, ext4Src: string, xfsSrc: string, work: string): Promise<DiskPart[]> {
  fs.rmSync(disk, { force: true });
  fs.closeSync(fs.openSync(disk, 'w'));
  fs.truncateSync(disk, 96 * 1024 * 1024);
  await must('sgdisk', ['-n', '1:2048:+24M', '-t', '1:8300', '-c', '1:root', '-n', '2:0:+48M', '-t', '2:8300', '-c', '2:data', disk]);
  const parts = await partxList(disk);
  const [p1, p2] = parts;
  await makeExt4(disk, p1!.size / 1024 / 1024, ext4Src, p1!.offset);
  const xfsImg = path.join(work, 'part2.xfs');
  await makeXfs(xfsImg, p2!.size / 1024 / 1024, xfsSrc);
  placeAt(disk, p2!.offset, xfsImg);
  fs.rmSync(xfsImg);
  return parts;
}

/** mounts a partition of a disk image read-write (to change the source between backups) */
export async function withPartitionRw(disk: string, part: DiskPart, fstype: 'ext4' | 'xfs', target: string, fn: (dir: string) => void | Promise<void>): Promise<void> {
  fs.mkdirSync(target, { recursive: true });
  await must('mount', ['-t', fstype, '-o', `loop,offset=${part.offset},sizelimit=${part.size}`, disk, target]);
  try {
    await fn(target);
  } finally {
    await must('umount', [target]);
  }
}

/** the id of a backup made with the CLI */
export async function cliBackup(dataDir: string, volume: string, name: string, incremental = false): Promise<string> {
  const r = await cli(dataDir, ['-f', 'json', 'backup', 'create', volume, '--name', name, ...(incremental ? ['--incremental'] : [])]);
  if (r.code !== 0) throw new Error(`backup create failed: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { id: string }).id;
}
