/**
 * Ceph RBD images as volumes, through the `rbd` command as Cinder's Ceph drivers do.
 *
 * - A volume is `POOL/IMAGE` of the cluster named by `conf` (else CEPH_CONF, else Ceph's
 *   default search) as ceph user `user` (else Ceph's default,
 *   client.admin). Names are checked before anything runs: no paths, spaces, '@' or
 *   namespaces, exactly one '/'.
 * - A backup never reads the image head: snapshotForBackup() takes a snapshot
 *   `backup.<backup-id>.snap.<seconds>` and its change source streams
 *   `rbd export-diff [--from-snap PARENT] POOL/IMAGE@SNAP -` through our diff codec, so a full
 *   backup reads only allocated extents and an incremental only the extents that changed.
 *   The parent's snapshot is removed once the new backup is committed; the new one is kept
 *   for the next incremental. If the parent's snapshot has gone, the diff falls back to a full
 *   one, the ranges it does not cover are reported as zeroes (so nothing of the parent's map
 *   survives where the image is now unallocated), and a note says so on the record.
 * - open() gives a random-access VolumeDevice (restore targets, instant restore) through a
 *   small long-lived python3-rbd helper (rbd-io.ts); plain restores into an RBD image use
 *   `rbd import-diff` instead (gateway/engine/restore-rbd.ts).
 *
 * Names and options are checked in rbd-names.ts; a backup's change source is rbd-changes.ts.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { RbdDiffReader } from '../rbd/diff.js';
import type { VolumeDriver } from './types.js';
import { RbdImageDevice } from './rbd-io.js';
import { RbdChangeSource, type DiffRecord } from './rbd-changes.js';
import { type RbdOptions, RbdError, checkSnapName, backupSnapName, parseRbdSpec, resolveOptions } from './rbd-names.js';

export { BACKUP_SNAP_RE, RbdError, type RbdOptions, type RbdSpec, backupSnapName, checkSnapName, parseRbdSpec } from './rbd-names.js';
export { RbdChangeSource } from './rbd-changes.js';

/**
 * Bounds on waiting for a cluster that does not answer (librados waits forever by default):
 * connecting, monitor and OSD operations. Generous, so a loaded cluster is not cut short.
 */
export const CEPH_TIMEOUTS = { client_mount_timeout: 30, rados_mon_op_timeout: 60, rados_osd_op_timeout: 120 } as const;

/** The common arguments of every `rbd` run: cluster, user, timeouts. */
export function rbdBaseArgs(o: { conf?: string; user?: string }): string[] {
  return [...(o.conf ? ['--conf', o.conf] : []), ...(o.user ? ['--id', o.user] : []), ...Object.entries(CEPH_TIMEOUTS).flatMap(([k, v]) => [`--${k}`, String(v)])];
}

/** The last meaningful line of rbd's stderr ("rbd: error opening image x: (2) No such file or directory"). */
function lastLine(stderr: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.replace(/^\S+ \S+ [0-9a-f]+ -?\d+ /, '').trim()) // log prefixes of librados lines
    .filter((l) => l && !/complete\.\.\.|^Creating snap|^Removing snap|^Importing|^Exporting/.test(l));
  return (lines.at(-1) ?? '').replace(/^rbd: /, '').slice(0, 400);
}

function errnoOf(stderr: string): number | undefined {
  const m = /\((\d+)\) [A-Z][^()\n]*$/m.exec(stderr);
  return m ? Number(m[1]) : undefined;
}

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

function waitExit(child: ChildProcessWithoutNullStreams, stderrOf: () => string): Promise<Exit> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve({ code: child.exitCode, signal: child.signalCode, stderr: stderrOf() });
      return;
    }
    child.once('close', (code, signal) => resolve({ code, signal, stderr: stderrOf() }));
  });
}

export class RbdVolume implements VolumeDriver {
  readonly kind = 'rbd' as const;
  readonly pool: string;
  readonly image: string;
  private readonly o: { conf?: string; user?: string };

  constructor(readonly spec: string, opts: RbdOptions = {}) {
    ({ pool: this.pool, image: this.image } = parseRbdSpec(spec));
    this.o = resolveOptions(opts);
  }

  /** conf and user as resolved (for a helper process or the record) */
  get options(): { conf?: string; user?: string } {
    return { ...this.o };
  }

  /** Starts `rbd ARGS` with the cluster arguments; stderr is collected (last 16 KiB). */
  spawnRbd(args: string[], stdin: 'pipe' | 'ignore' = 'ignore'): { child: ChildProcessWithoutNullStreams; stderr: () => string; exit: Promise<Exit> } {
    const child = spawn('rbd', [...rbdBaseArgs(this.o), ...args], { stdio: [stdin === 'pipe' ? 'pipe' : 'ignore', 'pipe', 'pipe'] }) as ChildProcessWithoutNullStreams;
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-16384)));
    let spawnError: NodeJS.ErrnoException | null = null;
    child.on('error', (e) => (spawnError = e));
    const exit = waitExit(child, () => {
      const se = spawnError as NodeJS.ErrnoException | null;
      if (!se) return err;
      return `${err}\nrbd: ${se.code === 'ENOENT' ? 'the rbd command is not installed (Debian package ceph-common)' : se.message}`;
    });
    return { child, stderr: () => err, exit };
  }

  /** Runs `rbd ARGS` to the end; its stdout, or an RbdError saying what failed. */
  async run(args: string[], what: string): Promise<Buffer> {
    const { child, exit } = this.spawnRbd(args);
    const out: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    const r = await exit;
    if (r.code !== 0) throw new RbdError(`${what} failed: ${lastLine(r.stderr) || `rbd exited with ${r.code ?? r.signal}`}`, errnoOf(r.stderr));
    return Buffer.concat(out);
  }

  private async info(spec: string): Promise<{ size: number; object_size?: number }> {
    let out: Buffer;
    try {
      out = await this.run(['info', '--format', 'json', spec], `rbd info ${spec}`);
    } catch (e) {
      if (e instanceof RbdError && e.errno === 2) throw new RbdError(`RBD image ${spec} does not exist`, 2);
      throw e;
    }
    const j = JSON.parse(out.toString('utf8')) as { size?: unknown; object_size?: number };
    if (typeof j.size !== 'number' || !Number.isSafeInteger(j.size)) throw new RbdError(`rbd info ${spec}: no size in its answer`);
    return { size: j.size, ...(j.object_size ? { object_size: j.object_size } : {}) };
  }

  async size(): Promise<number> {
    return (await this.info(this.spec)).size;
  }

  async exists(): Promise<boolean> {
    try {
      await this.info(this.spec);
      return true;
    } catch (e) {
      if (e instanceof RbdError && e.errno === 2) return false;
      throw e;
    }
  }

  /** `rbd create --size N` (bytes); refuses an existing image. */
  static async create(spec: string, size: number, opts: RbdOptions = {}): Promise<RbdVolume> {
    const v = new RbdVolume(spec, opts);
    if (!Number.isSafeInteger(size) || size <= 0) throw new RbdError(`invalid size ${size} for a new RBD image`);
    try {
      await v.run(['create', '--size', `${size}B`, v.spec], `rbd create ${v.spec}`);
    } catch (e) {
      if (e instanceof RbdError && e.errno === 17) throw new RbdError(`RBD image ${v.spec} already exists`, 17);
      throw e;
    }
    return v;
  }

  /** `rbd remove` (only for images blockgate just created and must roll back). */
  async remove(): Promise<void> {
    await this.run(['remove', '--no-progress', this.spec], `rbd remove ${this.spec}`);
  }

  /** True if the image head has no allocated extent (a fresh image: holes need no writing). */
  async isEmpty(): Promise<boolean> {
    const out = await this.run(['diff', '--whole-object', '--format', 'json', this.spec], `rbd diff ${this.spec}`);
    const list = JSON.parse(out.toString('utf8') || '[]') as Array<{ exists?: string | boolean }>;
    return !list.some((e) => e.exists === true || e.exists === 'true');
  }

  async snapshots(): Promise<string[]> {
    const out = await this.run(['snap', 'ls', '--format', 'json', this.spec], `rbd snap ls ${this.spec}`);
    return (JSON.parse(out.toString('utf8') || '[]') as Array<{ name: string }>).map((s) => s.name);
  }

  async createSnapshot(name: string): Promise<void> {
    await this.run(['snap', 'create', '--no-progress', `${this.spec}@${checkSnapName(name)}`], `rbd snap create ${this.spec}@${name}`);
  }

  /** Removes a snapshot; one that is already gone is not an error. */
  async removeSnapshot(name: string): Promise<void> {
    try {
      await this.run(['snap', 'rm', '--no-progress', `${this.spec}@${checkSnapName(name)}`], `rbd snap rm ${this.spec}@${name}`);
    } catch (e) {
      if (e instanceof RbdError && e.errno === 2) return;
      throw e;
    }
  }

  async snapshotSize(name: string): Promise<number> {
    return (await this.info(`${this.spec}@${checkSnapName(name)}`)).size;
  }

  async open(mode: 'read' | 'write' | 'control'): Promise<RbdImageDevice> {
    return RbdImageDevice.open(this.pool, this.image, mode, this.o);
  }

  /**
   * Takes the backup's snapshot. Snapshot create, list and remove for the backup go through
   * one librbd connection (the python3-rbd helper of rbd-io.ts) held until commit/abort: an
   * `rbd snap` run costs a cluster connection each, and `rbd snap rm` several hundred ms.
   */
  async snapshotForBackup(backupId: string): Promise<RbdChangeSource> {
    const snap = backupSnapName(backupId);
    const ctl = await this.open('control');
    try {
      await ctl.createSnapshot(snap);
    } catch (e) {
      await ctl.close();
      throw new RbdError(`cannot snapshot RBD image ${this.spec}: ${(e as Error).message}`);
    }
    try {
      const list = await ctl.listSnapshots();
      const me = list.find((s) => s.name === snap);
      if (!me) throw new RbdError(`snapshot ${this.spec}@${snap} is missing right after its creation`);
      return new RbdChangeSource(this, snap, me.size, ctl, new Set(list.map((s) => s.name)));
    } catch (e) {
      await ctl.removeSnapshot(snap).catch(() => undefined);
      await ctl.close();
      throw e;
    }
  }

  /** The records of `rbd export-diff [--from-snap FROM] SPEC@SNAP -`, streamed and checked. */
  async *exportDiff(snap: string, from: string | null): AsyncGenerator<DiffRecord> {
    const args = ['export-diff', '--no-progress', ...(from ? ['--from-snap', checkSnapName(from)] : []), `${this.spec}@${checkSnapName(snap)}`, '-'];
    const what = `rbd export-diff ${from ? `--from-snap ${from} ` : ''}${this.spec}@${snap}`;
    const { child, exit } = this.spawnRbd(args);
    let finished = false;
    try {
      // through a PassThrough: Node resumes (and so drains into nothing) a child's stdout that
      // has no 'readable' listener when the child exits, which a pull reader between two
      // reads does not have; a pipe keeps every byte, with backpressure
      const reader = new RbdDiffReader(child.stdout.pipe(new PassThrough({ highWaterMark: 1 << 20 })), { maxPieceSize: 4 << 20 });
      try {
        for await (const rec of reader) {
          if (rec.type === 'size') yield { type: 'size', size: rec.size };
          else if (rec.type === 'data') yield { type: 'data', offset: rec.offset, data: rec.data };
          else if (rec.type === 'zero') yield { type: 'zero', offset: rec.offset, length: rec.length };
        }
      } catch (e) {
        // a dying rbd truncates its stream: its own message says more than the codec's
        const r = await Promise.race([exit, new Promise<null>((res) => setTimeout(() => res(null), 5000))]);
        if (r && r.code !== 0) throw new RbdError(`${what} failed: ${lastLine(r.stderr) || `exit ${r.code ?? r.signal}`}`, errnoOf(r.stderr));
        throw e;
      }
      const r = await exit;
      finished = true;
      if (r.code !== 0) throw new RbdError(`${what} failed: ${lastLine(r.stderr) || `exit ${r.code ?? r.signal}`}`, errnoOf(r.stderr));
    } finally {
      if (!finished && child.exitCode === null && child.signalCode === null) {
        child.stdout.destroy();
        child.kill('SIGTERM');
      }
    }
  }
}
