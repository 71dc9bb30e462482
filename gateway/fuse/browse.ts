/**
 * One-command browse of a backup: mount the catalog privately (a `blockgate mount` child
 * process serves it), loop-mount every filesystem found in the backup's partitions (or in
 * the whole disk when it has no partition table) read-only without replaying any journal,
 * and record what was done in the data dir (browse/<hash of DIR>.json, 0600, never through a
 * symlink) so that `browse --close DIR` (or Ctrl-C on a foreground browse) undoes all of it.
 * DIR is made new (mkdtemp under the temp dir by default) or must be an empty directory only
 * we can change (gateway/names.ts prepareDir): this runs as root.
 *
 * The process that runs this never serves the FUSE mount it reads (a child does), and every
 * mount, blkid and losetup runs as a child process, so nothing here can deadlock on the mount.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { BackupRecord } from '../../catalog/records.js';
import { InvalidNameError, prepareDir } from '../names.js';
import { findMount, lazyUnmount, listMounts, pidAlive, run, servingPid } from './mount.js';

/** the data dir's folder of browse states (and the catalog mounts' logs) */
export const STATE_DIR = 'browse';
const FUSE_DIR = '.fuse';
const { O_WRONLY, O_CREAT, O_EXCL, O_APPEND, O_NOFOLLOW } = fs.constants;

export interface BrowseMount {
  image: string;
  target: string;
  fstype: string;
  options: string;
  loop?: string;
}

export interface BrowseSkipped {
  image: string;
  fstype?: string;
  reason: string;
}

export interface BrowseState {
  version: 1;
  backup: { id: string; name: string; volume: string };
  dir: string;
  fuseDir: string;
  /** the images' directory inside the FUSE mount */
  imagesDir: string;
  mountPid?: number;
  createdDir: boolean;
  started: string;
  mounts: BrowseMount[];
  skipped: BrowseSkipped[];
}

export class BrowseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BrowseError';
  }
}

/** Root and loop devices are needed; says plainly which is missing. */
export async function checkBrowsePrerequisites(): Promise<void> {
  if (process.getuid?.() !== 0) {
    throw new BrowseError(
      'browse needs root: attaching loop devices and mounting filesystems need CAP_SYS_ADMIN. ' +
        'Run it with sudo, or use `blockgate mount MOUNTPOINT` (no loop devices needed) and read the .img files directly.',
    );
  }
  if (!fs.existsSync('/dev/loop-control')) {
    throw new BrowseError(
      'this machine has no loop devices (/dev/loop-control is missing): load the loop module (`modprobe loop`), ' +
        'or in a container give it /dev/loop-control and /dev/loop*. `blockgate mount MOUNTPOINT` still works without them.',
    );
  }
  const r = await run('losetup', ['-f'], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new BrowseError(`no free loop device (losetup -f: ${r.stderr.trim() || `exit ${r.code}`})`);
}

function stateDir(dataDir: string): string {
  const d = path.join(path.resolve(dataDir), STATE_DIR);
  fs.mkdirSync(d, { recursive: true, mode: 0o700 });
  return d;
}

/** the state file of a browse of DIR: in the data dir, named by DIR */
export function stateFile(dataDir: string, dir: string): string {
  return path.join(stateDir(dataDir), `${createHash('sha256').update(path.resolve(dir)).digest('hex').slice(0, 32)}.json`);
}

export function readState(dataDir: string, dir: string): BrowseState | undefined {
  const file = stateFile(dataDir, dir);
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | O_NOFOLLOW);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new BrowseError(`cannot read ${file}: ${(e as Error).message}`);
  }
  try {
    const s = JSON.parse(fs.readFileSync(fd, 'utf8')) as BrowseState;
    return s.dir === path.resolve(dir) ? s : undefined;
  } catch (e) {
    throw new BrowseError(`cannot read ${file}: ${(e as Error).message}`);
  } finally {
    fs.closeSync(fd);
  }
}

/** temp file (created exclusively, 0600, never through a symlink) renamed over the state */
function writeState(dataDir: string, s: BrowseState): void {
  const file = stateFile(dataDir, s.dir);
  const tmp = `${file}.${process.pid}.tmp`;
  fs.rmSync(tmp, { force: true });
  const fd = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
  try {
    fs.writeFileSync(fd, JSON.stringify(s, null, 2) + '\n');
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

function logFile(dataDir: string, dir: string): string {
  return stateFile(dataDir, dir).replace(/\.json$/, '.log');
}

/** a new private directory for a browse when none is given: mkdtemp, so nobody can have made it first */
export function defaultBrowseDir(backupId: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `blockgate-browse-${backupId.slice(0, 8)}-`));
}

/** mount options that open a filesystem read-only without replaying its journal or log */
export function mountOptionsFor(fstype: string): { type: string; options: string } | { reason: string } {
  switch (fstype) {
    case 'ext2':
    case 'ext3':
    case 'ext4':
      // the ext4 driver reads all three and knows noload
      return { type: 'ext4', options: 'ro,noload' };
    case 'xfs':
      return { type: 'xfs', options: 'ro,norecovery,nouuid' };
    case 'btrfs':
      return { type: 'btrfs', options: 'ro,rescue=nologreplay' };
    case 'swap':
      return { reason: 'swap space: there is nothing to mount' };
    case 'LVM2_member':
      return { reason: 'LVM physical volume: activate its volume group (vgchange -ay) to reach the logical volumes' };
    case 'crypto_LUKS':
      return { reason: 'encrypted (LUKS): open it with cryptsetup first' };
    case 'linux_raid_member':
      return { reason: 'Linux RAID member: assemble the array with mdadm first' };
    case 'zfs_member':
      return { reason: 'ZFS pool member: import it with zpool import -o readonly=on' };
    default:
      return { type: fstype, options: 'ro' };
  }
}

/** filesystem type of an image file, from blkid's low-level probe */
async function probeType(file: string): Promise<{ type?: string; ptType?: string; why?: string }> {
  const r = await run('blkid', ['-p', '-o', 'export', file], { timeoutMs: 60_000 });
  const vals: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) vals[line.slice(0, i)] = line.slice(i + 1);
  }
  if (vals.TYPE) return { type: vals.TYPE };
  if (vals.PTTYPE) return { ptType: vals.PTTYPE };
  if (r.code === 2 || r.code === 0) return { why: 'no filesystem signature found' };
  return { why: `blkid failed: ${r.stderr.trim() || `exit ${r.code}`}` };
}

async function loopOf(target: string): Promise<string | undefined> {
  const m = await findMount(target);
  return m && /^\/dev\/loop\d+$/.test(m.source) ? m.source : undefined;
}

/** loop devices whose backing file is under dir */
async function loopsUnder(dir: string): Promise<string[]> {
  const r = await run('losetup', ['--list', '--noheadings', '--raw', '-O', 'NAME,BACK-FILE'], { timeoutMs: 10_000 });
  const out: string[] = [];
  for (const line of r.stdout.split('\n')) {
    const i = line.indexOf(' ');
    if (i < 0) continue;
    const back = line.slice(i + 1).replace(/\\x([0-9a-f]{2})/gi, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
    if (back.startsWith(dir + '/')) out.push(line.slice(0, i));
  }
  return out;
}

export interface OpenBrowseOptions {
  /** the blockgate CLI script to run `mount` with */
  cli: string;
  dataDir: string;
  backup: BackupRecord;
  dir: string;
  /** dir was just made for this browse (by defaultBrowseDir): it is removed on close */
  madeDir?: boolean;
  log?: (msg: string) => void;
}

/** Mounts everything and returns the state written to DIR/.blockgate-browse.json. */
export async function openBrowse(o: OpenBrowseOptions): Promise<BrowseState> {
  const dataDir = path.resolve(o.dataDir);
  let dir = path.resolve(o.dir);
  if (readState(dataDir, dir)) throw new BrowseError(`${dir} is already an open browse; close it with \`blockgate browse --close ${dir}\``);
  if (await findMount(dir)) throw new BrowseError(`${dir} is a mount point; choose an empty directory`);
  let createdDir = !!o.madeDir;
  if (!o.madeDir) {
    try {
      ({ dir, created: createdDir } = prepareDir(dir, 'browse directory'));
    } catch (e) {
      throw e instanceof InvalidNameError && /not empty/.test(e.message) ? new BrowseError(e.message) : e;
    }
  }
  const fuseDir = path.join(dir, FUSE_DIR);
  fs.mkdirSync(fuseDir, { mode: 0o700 });
  const state: BrowseState = {
    version: 1,
    backup: { id: o.backup.id, name: o.backup.name, volume: o.backup.volume_name },
    dir,
    fuseDir,
    imagesDir: path.join(fuseDir, 'by-id', o.backup.id),
    createdDir,
    started: new Date().toISOString(),
    mounts: [],
    skipped: [],
  };
  writeState(dataDir, state);
  const log = logFile(dataDir, dir);
  try {
    // the catalog is served by a child process of its own (never by the one reading it)
    const logFd = fs.openSync(log, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW, 0o600);
    const child = spawn(process.execPath, [o.cli, '--data-dir', o.dataDir, 'mount', fuseDir], { detached: true, stdio: ['ignore', logFd, logFd] });
    fs.closeSync(logFd);
    child.unref();
    state.mountPid = child.pid;
    writeState(dataDir, state);
    let exited: number | null | undefined;
    child.once('exit', (code) => (exited = code));
    const deadline = Date.now() + 30_000;
    for (;;) {
      const m = await findMount(fuseDir);
      if (m && servingPid(m) === child.pid) break;
      if (exited !== undefined || Date.now() > deadline) {
        const tail = fs.readFileSync(log, 'utf8').trim().split('\n').slice(-5).join('\n');
        throw new BrowseError(`the catalog mount did not come up (${exited !== undefined ? `exit ${exited}` : 'timed out'}): ${tail}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const names = (await fs.promises.readdir(state.imagesDir)).filter((n) => n.endsWith('.img')).sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
    const parts = names.filter((n) => n.startsWith('part'));
    for (const image of parts.length ? parts : ['disk.img']) {
      const file = path.join(state.imagesDir, image);
      const probe = await probeType(file);
      if (!probe.type) {
        state.skipped.push({ image, reason: probe.ptType ? `holds a ${probe.ptType} partition table of its own` : probe.why! });
        continue;
      }
      const how = mountOptionsFor(probe.type);
      if ('reason' in how) {
        state.skipped.push({ image, fstype: probe.type, reason: how.reason });
        continue;
      }
      const target = path.join(dir, image.replace(/\.img$/, ''));
      fs.mkdirSync(target, { mode: 0o755 });
      const r = await run('mount', ['-t', how.type, '-o', `loop,${how.options}`, file, target], { timeoutMs: 120_000 });
      if (r.code !== 0) {
        fs.rmdirSync(target);
        state.skipped.push({ image, fstype: probe.type, reason: `mount failed: ${r.stderr.trim().replace(/^mount: /, '') || `exit ${r.code}`}` });
        continue;
      }
      state.mounts.push({ image, target, fstype: probe.type, options: how.options, loop: await loopOf(target) });
      writeState(dataDir, state);
      o.log?.(`mounted ${image} (${probe.type}) at ${target}`);
    }
    writeState(dataDir, state);
    return state;
  } catch (e) {
    await closeBrowse(dataDir, dir).catch(() => undefined);
    throw e;
  }
}

/** Undoes a browse: filesystems, loop devices, the catalog mount, its directories. */
export async function closeBrowse(dataDirArg: string, dirArg: string): Promise<string[]> {
  const dataDir = path.resolve(dataDirArg);
  const dir = path.resolve(dirArg);
  const state = readState(dataDir, dir);
  if (!state) throw new BrowseError(`${dir} is not an open browse of ${dataDir}`);
  const notes: string[] = [];
  for (const m of [...state.mounts].reverse()) {
    if (await findMount(m.target)) {
      const r = await run('umount', [m.target], { timeoutMs: 60_000 });
      if (r.code !== 0) {
        const l = await run('umount', ['-l', m.target], { timeoutMs: 60_000 });
        notes.push(l.code === 0 ? `${m.target} was busy (${r.stderr.trim()}); detached it lazily` : `cannot unmount ${m.target}: ${l.stderr.trim()}`);
      }
    }
    await fs.promises.rmdir(m.target).catch(() => undefined);
  }
  // loop devices left on our images (mount -o loop frees its own; this catches the rest)
  for (const loop of await loopsUnder(state.fuseDir)) {
    const r = await run('losetup', ['-d', loop], { timeoutMs: 30_000 });
    if (r.code !== 0) notes.push(`cannot detach ${loop}: ${r.stderr.trim()}`);
  }
  // stop the process serving the catalog mount, or clear its mount if it is gone
  const entry = await findMount(state.fuseDir);
  const pid = entry ? servingPid(entry) : undefined;
  if (pid && pid === state.mountPid && pidAlive(pid)) {
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline && ((await findMount(state.fuseDir)) || pidAlive(pid))) await new Promise((r) => setTimeout(r, 100));
  }
  if (await findMount(state.fuseDir)) {
    const how = await lazyUnmount(state.fuseDir, { hung: true });
    notes.push(`the catalog mount ${state.fuseDir} did not go away by itself; cleared it with ${how}`);
  }
  await fs.promises.rmdir(state.fuseDir).catch(() => undefined);
  await fs.promises.rm(logFile(dataDir, dir), { force: true });
  await fs.promises.rm(stateFile(dataDir, dir), { force: true });
  if (state.createdDir) await fs.promises.rmdir(dir).catch(() => notes.push(`${dir} is not empty; left it`));
  return notes;
}

/** mounts under a directory (for "nothing left mounted" checks) */
export async function mountsUnder(dir: string): Promise<string[]> {
  const d = path.resolve(dir);
  return (await listMounts()).filter((m) => m.mountPoint === d || m.mountPoint.startsWith(d + '/')).map((m) => m.mountPoint);
}
