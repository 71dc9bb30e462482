/**
 * One-command browse of a backup: mount the catalog privately (a `blockgate mount` child
 * process serves it), loop-mount every filesystem found in the backup's partitions (or in
 * the whole disk when it has no partition table) read-only without replaying any journal,
 * and record what was done in DIR/.blockgate-browse.json so that `browse --close DIR` (or
 * Ctrl-C on a foreground browse) undoes all of it.
 *
 * The process that runs this never serves the FUSE mount it reads (a child does), and every
 * mount, blkid and losetup runs as a child process, so nothing here can deadlock on the mount.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { BackupRecord } from '../../catalog/records.js';
import { findMount, lazyUnmount, listMounts, pidAlive, run, servingPid } from './mount.js';

export const STATE_FILE = '.blockgate-browse.json';
const LOG_FILE = '.blockgate-mount.log';
const FUSE_DIR = '.fuse';

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

function stateFile(dir: string): string {
  return path.join(dir, STATE_FILE);
}

export function readState(dir: string): BrowseState | undefined {
  try {
    return JSON.parse(fs.readFileSync(stateFile(dir), 'utf8')) as BrowseState;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new BrowseError(`cannot read ${stateFile(dir)}: ${(e as Error).message}`);
  }
}

function writeState(s: BrowseState): void {
  const file = stateFile(s.dir);
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(s, null, 2) + '\n');
  fs.renameSync(`${file}.tmp`, file);
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
  log?: (msg: string) => void;
}

/** Mounts everything and returns the state written to DIR/.blockgate-browse.json. */
export async function openBrowse(o: OpenBrowseOptions): Promise<BrowseState> {
  const dir = path.resolve(o.dir);
  if (readState(dir)) throw new BrowseError(`${dir} is already an open browse; close it with \`blockgate browse --close ${dir}\``);
  if (await findMount(dir)) throw new BrowseError(`${dir} is a mount point; choose an empty directory`);
  let createdDir = false;
  if (fs.existsSync(dir)) {
    if (fs.readdirSync(dir).length) throw new BrowseError(`${dir} is not empty; choose an empty or new directory`);
  } else {
    fs.mkdirSync(dir, { recursive: true });
    createdDir = true;
  }
  const fuseDir = path.join(dir, FUSE_DIR);
  fs.mkdirSync(fuseDir);
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
  writeState(state);
  try {
    // the catalog is served by a child process of its own (never by the one reading it)
    const logFd = fs.openSync(path.join(dir, LOG_FILE), 'a');
    const child = spawn(process.execPath, [o.cli, '--data-dir', o.dataDir, 'mount', fuseDir], { detached: true, stdio: ['ignore', logFd, logFd] });
    fs.closeSync(logFd);
    child.unref();
    state.mountPid = child.pid;
    writeState(state);
    let exited: number | null | undefined;
    child.once('exit', (code) => (exited = code));
    const deadline = Date.now() + 30_000;
    for (;;) {
      const m = await findMount(fuseDir);
      if (m && servingPid(m) === child.pid) break;
      if (exited !== undefined || Date.now() > deadline) {
        const log = fs.readFileSync(path.join(dir, LOG_FILE), 'utf8').trim().split('\n').slice(-5).join('\n');
        throw new BrowseError(`the catalog mount did not come up (${exited !== undefined ? `exit ${exited}` : 'timed out'}): ${log}`);
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
      fs.mkdirSync(target, { recursive: true });
      const r = await run('mount', ['-t', how.type, '-o', `loop,${how.options}`, file, target], { timeoutMs: 120_000 });
      if (r.code !== 0) {
        fs.rmdirSync(target);
        state.skipped.push({ image, fstype: probe.type, reason: `mount failed: ${r.stderr.trim().replace(/^mount: /, '') || `exit ${r.code}`}` });
        continue;
      }
      state.mounts.push({ image, target, fstype: probe.type, options: how.options, loop: await loopOf(target) });
      writeState(state);
      o.log?.(`mounted ${image} (${probe.type}) at ${target}`);
    }
    writeState(state);
    return state;
  } catch (e) {
    await closeBrowse(dir).catch(() => undefined);
    throw e;
  }
}

/** Undoes a browse: filesystems, loop devices, the catalog mount, its directories. */
export async function closeBrowse(dirArg: string): Promise<string[]> {
  const dir = path.resolve(dirArg);
  const state = readState(dir);
  if (!state) throw new BrowseError(`${dir} is not an open browse (no ${STATE_FILE} in it)`);
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
  await fs.promises.rm(path.join(dir, LOG_FILE), { force: true });
  await fs.promises.rm(stateFile(dir), { force: true });
  if (state.createdDir) await fs.promises.rmdir(dir).catch(() => notes.push(`${dir} is not empty; left it`));
  return notes;
}

/** mounts under a directory (for "nothing left mounted" checks) */
export async function mountsUnder(dir: string): Promise<string[]> {
  const d = path.resolve(dir);
  return (await listMounts()).filter((m) => m.mountPoint === d || m.mountPoint.startsWith(d + '/')).map((m) => m.mountPoint);
}
