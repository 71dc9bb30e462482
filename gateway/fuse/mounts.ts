/**
 * The machine's mount table, as far as blockgate's FUSE mounts go: finding a mount, telling
 * a live one from a stale one (its server died: "Transport endpoint is not connected") or a
 * hung one (its server stopped), and clearing them lazily. Everything that looks at a mount
 * point runs in a child process or reads /proc, so a serving process may call it safely.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ConflictError } from '../../catalog/catalog.js';

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
  await fs.promises.mkdir(mp, { recursive: true, mode: 0o700 });
  const st = await fs.promises.stat(mp);
  if (!st.isDirectory()) throw new Error(`${mp} is not a directory`);
  return note;
}
