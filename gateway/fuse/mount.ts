/**
 * Mounting the catalog filesystem (fs.ts) with FUSE (npm fuse-native over the system's
 * libfuse2), and the mount-table chores around it: finding a mount, telling a live mount
 * from a stale one (its serving process died: "Transport endpoint is not connected"), and
 * clearing stale mounts lazily.
 *
 * Safety: the serving process never touches its own mount point with a blocking call — the
 * FUSE requests it must answer run on its own event loop. Everything here that looks at a
 * mount point runs in a child process (stat, fusermount, umount) or reads /proc.
 * The mount is made with `auto_unmount`: a helper fusermount process unmounts it when the
 * serving process dies, even by SIGKILL. Should the helper die too, the next `blockgate
 * mount` or `blockgate umount` finds the stale mount and clears it with `fusermount -u -z`.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import Fuse, { type FuseOps, type FuseOptions } from 'fuse-native';
import { ConflictError, NotFoundError } from '../../catalog/catalog.js';
import type { Appliance } from '../appliance.js';
import { CatalogFs, FsError, errno, type CatalogFsOptions, type Stat } from './fs.js';

export const FSTYPE = 'fuse.blockgate';
/** the mount source names the serving process: "blockgate:<pid>" */
export const SOURCE_PREFIX = 'blockgate:';

export interface MountEntry {
  mountPoint: string;
  fstype: string;
  source: string;
  options: string;
  /** "major:minor" of the mounted filesystem; a FUSE connection's id is the minor */
  device: string;
}

const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** every mount in this mount namespace (from /proc/self/mountinfo) */
export async function listMounts(): Promise<MountEntry[]> {
  const text = await fs.promises.readFile('/proc/self/mountinfo', 'utf8');
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const l = left.split(' ');
    const r = right.split(' ');
    out.push({ mountPoint: unescape(l[4]!), device: l[2]!, options: l[5]!, fstype: r[0]!, source: unescape(r[1]!) });
  }
  return out;
}

/** the top-most mount at a path, if any */
export async function findMount(mountPoint: string): Promise<MountEntry | undefined> {
  const mp = path.resolve(mountPoint);
  return (await listMounts()).filter((m) => m.mountPoint === mp).at(-1);
}

export function isBlockgateMount(m: MountEntry): boolean {
  return m.fstype === FSTYPE || m.source.startsWith(SOURCE_PREFIX);
}

/** the pid of the process serving a blockgate mount, from its source name */
export function servingPid(m: MountEntry): number | undefined {
  if (!m.source.startsWith(SOURCE_PREFIX)) return undefined;
  const pid = Number(m.source.slice(SOURCE_PREFIX.length));
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

/** true if the process runs (a zombie, exited but not reaped, does not count) */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'ENOENT';
  }
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** runs a command in a child process (never blocks the event loop) */
export function run(cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: opts.timeoutMs ?? 60_000, killSignal: 'SIGKILL', env: opts.env ?? process.env, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string; killed?: boolean }) | null;
      let code = 0;
      if (e) code = typeof e.code === 'number' ? e.code : e.killed ? 124 : 127;
      resolve({ code, stdout: String(stdout), stderr: String(stderr || (e && typeof e.code === 'string' ? e.message : '')) });
    });
  });
}

export type MountState = 'absent' | 'live' | 'stale' | 'hung';

export const ENOTCONN_TEXT = 'Transport endpoint is not connected';

/**
 * What is at a mount point: nothing, a working mount, a stale one (its FUSE server is gone:
 * ENOTCONN), or a hung one (a stat does not come back). The stat runs in a child process.
 */
export async function probeMount(mountPoint: string, timeoutMs = 5000): Promise<{ state: MountState; entry?: MountEntry; detail?: string }> {
  const entry = await findMount(mountPoint);
  if (!entry) return { state: 'absent' };
  const r = await run('stat', ['-c', '%i', path.resolve(mountPoint)], { timeoutMs });
  if (r.code === 0) return { state: 'live', entry };
  if (r.code === 124) return { state: 'hung', entry, detail: `a stat of it did not return within ${timeoutMs} ms` };
  if (/not connected|Software caused connection abort/i.test(r.stderr)) return { state: 'stale', entry, detail: ENOTCONN_TEXT };
  return { state: 'live', entry, detail: r.stderr.trim() };
}

/** aborts a FUSE connection (unblocks every process waiting on a hung server); root only */
async function abortConnection(entry: MountEntry): Promise<boolean> {
  const minor = entry.device.split(':')[1];
  const file = `/sys/fs/fuse/connections/${minor}/abort`;
  try {
    await fs.promises.writeFile(file, '1');
    return true;
  } catch {
    return false;
  }
}

/**
 * Detaches a mount lazily (`fusermount -u -z`, else `umount -l`): it leaves the namespace
 * at once and is freed when its last user goes. Returns the command that did it.
 * For a mount whose server hangs (`hung`), its FUSE connection is aborted first when
 * /sys/fs/fuse/connections is there, and `umount -l --no-canonicalize` goes first: fusermount
 * looks at the mount point (which blocks on a hung server) while holding its lock, which
 * would also stall every other fusermount on the machine.
 */
export async function lazyUnmount(mountPoint: string, opts: { hung?: boolean } = {}): Promise<string> {
  const mp = path.resolve(mountPoint);
  const entry = await findMount(mp);
  if (entry && opts.hung) await abortConnection(entry);
  const fusermount: [string, string[]][] = [
    ['fusermount', ['-u', '-z', mp]],
    ['fusermount3', ['-u', '-z', mp]],
  ];
  const umount: [string, string[]] = ['umount', ['-l', '--no-canonicalize', mp]];
  const tries = opts.hung && process.getuid?.() === 0 ? [umount, ...fusermount] : [...fusermount, umount];
  const errors: string[] = [];
  for (const [cmd, args] of tries) {
    const r = await run(cmd, args, { timeoutMs: 20_000 });
    if (r.code === 0) return `${cmd} ${args.filter((a) => a !== '--no-canonicalize').join(' ')}`;
    errors.push(`${cmd}: ${r.stderr.trim() || `exit ${r.code}`}`);
    if (!(await findMount(mp))) return `${cmd} ${args.join(' ')}`;
  }
  throw new Error(`cannot unmount ${mp}: ${errors.join('; ')}`);
}

/**
 * Makes a mount point ready: creates it if missing; clears a stale blockgate mount left by a
 * process that died (returns a message saying so); refuses a live or hung one.
 */
export async function prepareMountPoint(mountPoint: string): Promise<string | undefined> {
  const mp = path.resolve(mountPoint);
  const probe = await probeMount(mp);
  let note: string | undefined;
  if (probe.state === 'stale') {
    if (!isBlockgateMount(probe.entry!)) {
      throw new ConflictError(`${mp} holds a stale ${probe.entry!.fstype} mount (${ENOTCONN_TEXT}) that is not blockgate's; clear it with \`fusermount -u -z ${mp}\``);
    }
    const how = await lazyUnmount(mp);
    note = `${mp} was still mounted by a process that is gone (${ENOTCONN_TEXT}); cleared it with ${how.split(' ').slice(0, -1).join(' ')}`;
  } else if (probe.state === 'live') {
    const pid = servingPid(probe.entry!);
    throw new ConflictError(
      `${mp} is already mounted (${probe.entry!.fstype}${pid ? `, served by pid ${pid}` : ''}); run \`blockgate umount ${mp}\` first`,
    );
  } else if (probe.state === 'hung') {
    throw new ConflictError(`${mp} is mounted but does not answer (${probe.detail}); run \`blockgate umount ${mp}\` to clear it`);
  }
  await fs.promises.mkdir(mp, { recursive: true });
  const st = await fs.promises.stat(mp);
  if (!st.isDirectory()) throw new Error(`${mp} is not a directory`);
  return note;
}

/** fuse-native's stat layout (its getStatArray, which it does not export) */
function statArray(st: Stat): Uint32Array {
  const ints = new Uint32Array(18);
  const put = (i: number, n: number) => {
    ints[i] = n % 4294967296;
    ints[i + 1] = (n - ints[i]!) / 4294967296;
  };
  ints[0] = st.mode;
  ints[1] = st.uid;
  ints[2] = st.gid;
  put(3, st.size);
  ints[6] = st.nlink;
  ints[9] = st.blksize;
  put(10, st.blocks);
  put(12, st.atime.getTime());
  put(14, st.mtime.getTime());
  put(16, st.ctime.getTime());
  return ints;
}

class ReadOnlyFuse extends Fuse {
  constructor(
    mnt: string,
    ops: FuseOps,
    opts: FuseOptions,
    private readonly cfs: CatalogFs,
    private readonly fail: (e: unknown) => number,
  ) {
    super(mnt, ops, opts);
  }

  /** fuse-native has no option for "ro": add it to the options it builds */
  protected override _fuseOptions(): string {
    const o = super._fuseOptions();
    return o ? `${o},ro` : '-oro';
  }

  /**
   * fuse-native 2.2.6 answers fgetattr with getattr(path), but an open file's path may have
   * been renamed or removed from the tree since: answer from the open file's handle.
   */
  _op_fgetattr(signal: (code: number, st?: Uint32Array) => void, path: string, fd: number): void {
    this.cfs.fgetattr(path, fd).then(
      (st) => signal(0, statArray(st)),
      (e) => signal(this.fail(e)),
    );
  }
}

function allowOther(): boolean {
  if (process.getuid?.() === 0) return true;
  try {
    return /^\s*user_allow_other\s*$/m.test(fs.readFileSync('/etc/fuse.conf', 'utf8'));
  } catch {
    return false;
  }
}

export interface MountOptions extends CatalogFsOptions {
  /** libfuse debug output on stderr */
  debug?: boolean;
}

export class FuseMount {
  /** resolves when the mount went away without close() (someone unmounted it) */
  readonly gone: Promise<string>;
  private goneResolve!: (why: string) => void;
  private watch?: NodeJS.Timeout;
  private closing?: Promise<void>;

  private constructor(
    readonly mountPoint: string,
    readonly fs: CatalogFs,
    private readonly fuse: Fuse,
  ) {
    this.gone = new Promise((resolve) => (this.goneResolve = resolve));
  }

  static async start(app: Appliance, mountPoint: string, opts: MountOptions = {}): Promise<FuseMount> {
    const mp = path.resolve(mountPoint);
    const cfs = new CatalogFs(app, { label: mp, ...opts });
    const ops = fuseOps(cfs, opts.log);
    const mountWith = (autoUnmount: boolean) =>
      new Promise<Fuse>((resolve, reject) => {
        const options: FuseOptions = {
          autoUnmount,
          allowOther: allowOther(),
          defaultPermissions: true,
          autoCache: true,
          fsname: `${SOURCE_PREFIX}${process.pid}`,
          subtype: 'blockgate',
          debug: opts.debug,
          timeout: { default: 30_000, read: 120_000, open: 60_000, readdir: 60_000, getattr: 60_000, fgetattr: 60_000 },
        };
        const fuse = new ReadOnlyFuse(mp, ops, options, cfs, errorCode(opts.log));
        fuse.mount((err) => (err ? reject(err) : resolve(fuse)));
      });
    let fuse: Fuse;
    try {
      fuse = await mountWith(true);
    } catch (e) {
      opts.log?.(`mount with auto_unmount failed (${(e as Error).message}); mounting without it`);
      try {
        fuse = await mountWith(false);
      } catch (e2) {
        throw new Error(`cannot mount ${mp}: ${(e2 as Error).message} (is /dev/fuse there, and fuse3 + libfuse2 installed?)`);
      }
    }
    const m = new FuseMount(mp, cfs, fuse);
    m.watch = setInterval(() => {
      findMount(mp)
        .then((e) => {
          if (!e || servingPid(e) !== process.pid) m.goneResolve(`${mp} was unmounted`);
        })
        .catch(() => undefined);
    }, 1000);
    m.watch.unref();
    return m;
  }

  /** unmounts (lazily, so it never fails because something is still open) and drops the leases */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.watch);
      const still = await findMount(this.mountPoint);
      if (still && servingPid(still) === process.pid) {
        await new Promise<void>((resolve) => this.fuse.unmount(() => resolve()));
        if (await findMount(this.mountPoint).then((e) => e && servingPid(e) === process.pid)) await lazyUnmount(this.mountPoint).catch(() => undefined);
      }
      await this.fs.close();
      this.goneResolve('closed');
    })();
    return this.closing;
  }
}

/** the fuse-native operations over a CatalogFs: errno codes out, EROFS for anything that writes */
function errorCode(log?: (msg: string) => void): (e: unknown) => number {
  return (e) => {
    if (e instanceof FsError) return e.code;
    log?.(`unexpected error: ${(e as Error)?.stack ?? String(e)}`);
    return errno.EIO;
  };
}

export function fuseOps(cfs: CatalogFs, log?: (msg: string) => void): FuseOps {
  const fail = errorCode(log);
  const rofs = (...args: unknown[]) => (args.at(-1) as (code: number) => void)(errno.EROFS);
  return {
    getattr: (p, cb) => void cfs.getattrOrOpen(p).then((st) => cb(0, st), (e) => cb(fail(e))),
    fgetattr: (p, fd, cb) => void cfs.fgetattr(p, fd).then((st) => cb(0, st), (e) => cb(fail(e))),
    readdir: (p, cb) => void cfs.readdir(p).then((names) => cb(0, names), (e) => cb(fail(e))),
    readlink: (p, cb) => void cfs.readlink(p).then((t) => cb(0, t), (e) => cb(fail(e))),
    open: (p, flags, cb) => void cfs.open(p, flags).then((fd) => cb(0, fd), (e) => cb(fail(e))),
    release: (_p, fd, cb) => void cfs.release(fd).then(() => cb(0), (e) => cb(fail(e))),
    read: (_p, fd, buf, len, pos, cb) => void cfs.read(fd, buf, len, pos).then(cb, (e) => cb(fail(e))),
    statfs: (_p, cb) => {
      try {
        cb(0, cfs.statfs());
      } catch (e) {
        cb(fail(e));
      }
    },
    flush: (_p, _fd, cb) => cb(0),
    fsync: (_p, _fd, _d, cb) => cb(0),
    write: (_p, _fd, _buf, _len, _pos, cb) => cb(errno.EROFS),
    create: rofs,
    truncate: rofs,
    ftruncate: rofs,
    utimens: rofs,
    chown: rofs,
    chmod: rofs,
    mknod: rofs,
    setxattr: rofs,
    removexattr: rofs,
    unlink: rofs,
    rename: rofs,
    link: rofs,
    symlink: rofs,
    mkdir: rofs,
    rmdir: rofs,
  };
}

function processState(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0];
  } catch {
    return undefined;
  }
}

function looksLikeMountServer(pid: number): boolean {
  try {
    const args = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return args.includes('mount');
  } catch {
    return false;
  }
}

/**
 * `blockgate umount`: stops the process serving a blockgate mount (SIGTERM; it unmounts
 * and exits), or, when that process is gone or does not answer, detaches the mount lazily
 * (aborting its FUSE connection first when it hangs). Returns what was done.
 */
export async function unmountCatalog(mountPoint: string, opts: { waitMs?: number } = {}): Promise<string> {
  const mp = path.resolve(mountPoint);
  const probe = await probeMount(mp);
  if (probe.state === 'absent') throw Object.assign(new NotFoundError('mount', mp), { message: `${mp} is not mounted` });
  const entry = probe.entry!;
  if (!isBlockgateMount(entry)) throw new ConflictError(`${mp} is a ${entry.fstype} mount of ${entry.source}, not a blockgate one; not touching it`);
  const pid = servingPid(entry);
  if (probe.state === 'stale') {
    if (!isBlockgateMount(probe.entry!)) {
      throw new ConflictError(`${mp} holds a stale ${probe.entry!.fstype} mount (${ENOTCONN_TEXT}) that is not blockgate's; clear it with \`fusermount -u -z ${mp}\``);
    }
    const how = await lazyUnmount(mp);
    return `${mp} was left mounted by a process that is gone${pid ? ` (pid ${pid})` : ''} (${ENOTCONN_TEXT}); cleared it with ${how}`;
  }
  if (pid && pid !== process.pid && pidAlive(pid) && looksLikeMountServer(pid)) {
    process.kill(pid, 'SIGTERM');
    // a stopped process (SIGSTOP, a debugger) will not act on it: do not wait for it
    const deadline = Date.now() + (processState(pid) === 'T' || processState(pid) === 't' ? 0 : (opts.waitMs ?? 10_000));
    while (Date.now() < deadline) {
      const e = await findMount(mp);
      if (!e || servingPid(e) !== pid) return `unmounted ${mp} (stopped pid ${pid})`;
      await new Promise((r) => setTimeout(r, 100));
    }
    const how = await lazyUnmount(mp, { hung: true });
    return `pid ${pid} serving ${mp} did not stop; detached the mount with ${how}`;
  }
  const how = await lazyUnmount(mp, { hung: probe.state === 'hung' });
  return `${mp} had no live server${probe.state === 'hung' ? ` and did not answer (${probe.detail})` : ''}; detached it with ${how}`;
}
