/**
 * Mounting the catalog filesystem (fs.ts) with FUSE (npm fuse-native over the system's
 * libfuse2), and unmounting it; the mount-table chores (finding, probing and clearing
 * stale or hung mounts) are in mounts.ts.
 *
 * Safety: the serving process never touches its own mount point with a blocking call — the
 * FUSE requests it must answer run on its own event loop. Everything here that looks at a
 * mount point runs in a child process (stat, fusermount, umount) or reads /proc.
 * The mount is made with `auto_unmount`: a helper fusermount process unmounts it when the
 * serving process dies, even by SIGKILL; a watchdog process (watchdog.ts) does the same should
 * the helper leave without unmounting. Should both die too, the next `blockgate
 * mount` or `blockgate umount` finds the stale mount and clears it with `fusermount -u -z`.
 */
import fs from 'node:fs';
import path from 'node:path';
import Fuse, { type FuseOps, type FuseOptions } from 'fuse-native';
import { ConflictError, NotFoundError } from '../../catalog/catalog.js';
import type { Appliance } from '../appliance.js';
import { CatalogFs, FsError, errno, type CatalogFsOptions, type Stat } from './fs.js';
import { startWatchdog, type Watchdog } from './watchdog.js';

export * from './mounts.js';
import { ENOTCONN_TEXT, SOURCE_PREFIX, findMount, isBlockgateMount, lazyUnmount, pidAlive, probeMount, servingPid } from './mounts.js';

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

/** allow_other only when asked for (every backup's bytes would be readable by every local user) */
function allowOther(asked: boolean | undefined): boolean {
  if (!asked) return false;
  if (process.getuid?.() === 0) return true;
  let conf = '';
  try {
    conf = fs.readFileSync('/etc/fuse.conf', 'utf8');
  } catch {
    // no fuse.conf: not allowed
  }
  if (!/^\s*user_allow_other\s*$/m.test(conf)) throw new Error('--allow-other needs root, or user_allow_other in /etc/fuse.conf');
  return true;
}

export interface MountOptions extends CatalogFsOptions {
  /** libfuse debug output on stderr */
  debug?: boolean;
  /** FUSE allow_other: other local users may read the mount (default: only the mounting user) */
  allowOther?: boolean;
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
    private readonly watchdog: Watchdog,
  ) {
    this.gone = new Promise((resolve) => (this.goneResolve = resolve));
  }

  static async start(app: Appliance, mountPoint: string, opts: MountOptions = {}): Promise<FuseMount> {
    const mp = path.resolve(mountPoint);
    const cfs = new CatalogFs(app, { label: mp, ...opts });
    const ops = fuseOps(cfs, opts.log);
    const other = allowOther(opts.allowOther);
    const mountWith = (autoUnmount: boolean) =>
      new Promise<Fuse>((resolve, reject) => {
        const options: FuseOptions = {
          autoUnmount,
          allowOther: other,
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
    // started before the mount, so that it holds none of the mount's descriptors
    const watchdog = startWatchdog(mp, `${SOURCE_PREFIX}${process.pid}`, opts.log);
    let fuse: Fuse;
    try {
      fuse = await mountWith(true);
    } catch (e) {
      opts.log?.(`mount with auto_unmount failed (${(e as Error).message}); mounting without it`);
      try {
        fuse = await mountWith(false);
      } catch (e2) {
        watchdog.stop();
        throw new Error(`cannot mount ${mp}: ${(e2 as Error).message} (is /dev/fuse there, and fuse3 + libfuse2 installed?)`);
      }
    }
    const m = new FuseMount(mp, cfs, fuse, watchdog);
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
      this.watchdog.stop();
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
