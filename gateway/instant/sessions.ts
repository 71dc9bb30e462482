/**
 * Instant-restore sessions, owned by the daemon: start (claim backup and target, prepare the
 * target, export it at once and hydrate it in the background), list / show with progress,
 * cancel, detach, throttle, resume after a restart, and completion. Sessions are an export
 * source: the target of each running (or completed and still attached) session is served
 * read-write as `restore-<volume>`.
 *
 * States, as Cinder's: while hydrating the backup is `restoring` and the volume
 * `restoring-backup`; on completion both are `available` again; a cancelled or failed
 * session leaves the volume `error_restoring` with the reason. Progress (which blocks the
 * target owns) lives in the catalog (catalog/sessions.ts), committed only after the data is
 * durable on the target (see gateway/devices/hydrate.ts), so a killed daemon resumes where
 * it was, under the same export name.
 *
 * Modules: this file is the session manager (lifecycle and operations); records.ts the
 * catalog side that needs no daemon (settle, offline cancel); views.ts what list / show
 * report; config.ts the `instant` settings; hydration.ts the backup source and the blocks
 * owned at (re)start; exports.ts the served sessions as an export source.
 */
import { ConflictError, NotFoundError, ownerHere } from '../../catalog/catalog.js';
import { now } from '../../catalog/records.js';
import { ACTIVE_STATES, type SessionRecord, SessionStore } from '../../catalog/sessions.js';
import type { BlockDevice } from '../../blockdev/types.js';
import type { ExportInfo } from '../../nbd/server.js';
import type { VolumeDevice } from '../../drivers/volume/types.js';
import type { Appliance } from '../appliance.js';
import { BackupDevice } from '../devices/backup-device.js';
import { HydrateDevice } from '../devices/hydrate.js';
import { deviceSource } from '../devices/hydrate-blocks.js';
import { prepareRestore } from '../engine/restore.js';
import type { ExportSource } from '../exports/registry.js';
import type { ChunkReader } from '../read/chunk-reader.js';
import { type InstantConfig, instantConfig } from './config.js';
import { LiveSessions, type Log } from './exports.js';
import { startingOwnership } from './hydration.js';
import { CANCEL_REASON, cancelOffline, cannotCancel, ownerGone, settleSession } from './records.js';
import { liveView, offlineView, type SessionView, type UriMaker } from './views.js';

export { type InstantConfig, instantConfig } from './config.js';
export { CANCEL_REASON, cancelOffline, settleSession } from './records.js';
export { offlineView, type SessionView, type UriMaker } from './views.js';

export type Address = () => { host: string; port: number; socket: string };

export interface StartRequest {
  backup: string;
  /** existing volume; absent: a new one is created (named `name`, or restore-<backup>) */
  volume?: string;
  name?: string;
  detachOnComplete?: boolean;
  concurrency?: number;
  /** bytes/s, 0 = unlimited */
  rate?: number;
}

export class InstantRestores implements ExportSource {
  readonly store: SessionStore;
  /** the sessions served here */
  private readonly live: LiveSessions;
  private watch: NodeJS.Timeout | null = null;
  /** bytes copied by earlier runs of a resumed session */
  private readonly baseCopied = new Map<string, number>();

  constructor(
    private readonly app: Appliance,
    private readonly chunks: ChunkReader,
    private readonly uris: UriMaker,
    private readonly log: Log = () => {},
  ) {
    this.store = new SessionStore(app.catalog.env);
    this.live = new LiveSessions(app, this.store, log);
  }

  get config(): InstantConfig {
    return instantConfig(this.app);
  }

  // ------------------------------------------------------------------ lifecycle

  /** resumes every session whose daemon ended; re-serves completed, attached ones */
  async resumeAll(): Promise<void> {
    for (const rec of this.store.list()) {
      if (ACTIVE_STATES.includes(rec.status)) {
        if (!ownerGone(rec.owner) && rec.owner!.pid !== process.pid) {
          this.log('instant-restore-skipped', { session: rec.id, reason: `run by live pid ${rec.owner!.pid}` });
          continue;
        }
        try {
          await this.resume(rec);
        } catch (e) {
          const why = `instant restore could not resume: ${(e as Error).message}`;
          this.log('instant-restore-failed', { session: rec.id, error: why });
          settleSession(this.app, this.store, rec.id, 'failed', why);
        }
      } else if (rec.status === 'completed' && rec.attached) {
        if (!this.app.catalog.volumes.get(rec.volume_id)) {
          this.store.update(rec.id, () => ({ attached: false }));
          continue;
        }
        this.live.add(rec.id, rec.export_name, null);
      }
    }
    this.watch = setInterval(() => this.check(), 1000);
    this.watch.unref();
  }

  private async resume(rec: SessionRecord): Promise<void> {
    const { catalog } = this.app;
    const b = catalog.backups.get(rec.backup_id);
    if (!b || b.status !== 'restoring') throw new Error(`backup ${rec.backup_id} is ${b?.status ?? 'gone'}`);
    try {
      catalog.claimRestoreTarget(rec.volume_id);
    } catch (e) {
      // the claim of the daemon that ran it, killed and not reaped yet
      if (!(e instanceof ConflictError) || !rec.owner || !ownerGone(rec.owner)) throw e;
      catalog.releaseRestoreTarget(rec.volume_id);
      catalog.claimRestoreTarget(rec.volume_id);
    }
    let cur!: SessionRecord;
    catalog.env.transactionSync(() => {
      const bb = catalog.backups.get(rec.backup_id)!;
      catalog.backups.putSync(bb.id, { ...bb, owner: ownerHere(), updated_at: now() });
      cur = { ...this.store.db.get(rec.id)!, owner: ownerHere(), resumes: rec.resumes + 1, updated_at: now() };
      this.store.db.putSync(rec.id, cur);
    });
    await this.activate(cur);
    this.log('instant-restore-resumed', { session: rec.id, export: rec.export_name, blocksDurable: cur.blocks_durable, blocksTotal: cur.blocks_total });
  }

  /** stops every session's copy (they resume at the next start) and closes the targets */
  async stopAll(): Promise<void> {
    if (this.watch) clearInterval(this.watch);
    await this.live.closeAll();
  }

  /** the periodic watch: a backup taken out of `restoring` (Cinder's cancel) cancels its session */
  private check(): void {
    for (const l of this.live.values()) {
      if (!l.hydrate || l.hydrate.isComplete || l.closing) continue;
      const rec = this.store.get(l.id);
      if (!rec || !ACTIVE_STATES.includes(rec.status)) continue;
      const b = this.app.catalog.backups.get(rec.backup_id);
      if (!b || b.status !== 'restoring') {
        this.log('instant-restore-cancel', { session: l.id, reason: `backup is ${b?.status ?? 'gone'}` });
        void this.cancel(l.id).catch((e: Error) => this.log('instant-restore-error', { session: l.id, error: e.message }));
      }
    }
  }

  // ------------------------------------------------------------------ operations

  async start(req: StartRequest): Promise<SessionView> {
    if (this.live.stopped) throw new ConflictError('the daemon is stopping');
    const { catalog } = this.app;
    const cfg = this.config;
    if (req.volume) {
      const v = catalog.volume(req.volume);
      const mine = this.store.list().filter((s) => s.volume_id === v.id);
      const active = mine.find((s) => ACTIVE_STATES.includes(s.status));
      if (active) throw new ConflictError(`an instant restore into volume ${v.name} is already running (session ${active.id}, backup ${active.backup_name}); only one restore into a volume at a time`);
      const served = mine.find((s) => s.status === 'completed' && s.attached);
      if (served) throw new ConflictError(`volume ${v.name} is still attached as export ${served.export_name} (session ${served.id}); detach it first: blockgate restore detach ${served.id}`);
    }
    const t0 = Date.now();
    const { backup, target } = await prepareRestore(this.app, { backup: req.backup, volume: req.volume, newName: req.name });
    const t1 = Date.now();
    let rec: SessionRecord | undefined;
    try {
      rec = this.store.create({
        backup_id: backup.id,
        backup_name: backup.name,
        volume_id: target.id,
        volume_name: target.name,
        export_name: `restore-${target.name}`,
        status: 'starting',
        attached: true,
        detach_on_complete: !!req.detachOnComplete,
        block_size: backup.chunk_size,
        blocks_total: 0,
        size_bytes: 0,
        copy_concurrency: req.concurrency ?? cfg.concurrency,
        copy_rate: req.rate ?? cfg.rate,
        status_reason: null,
        owner: ownerHere(),
      });
      await this.activate(rec);
    } catch (e) {
      const why = `instant restore could not start: ${(e as Error).message}`;
      if (rec) settleSession(this.app, this.store, rec.id, 'failed', why);
      else {
        catalog.updateVolume(target.id, () => ({ status: 'error_restoring', status_reason: why }));
        if (catalog.backups.get(backup.id)?.status === 'restoring') catalog.transition(backup.id, ['restoring'], 'available', { owner: null });
        catalog.releaseRestoreTarget(target.id);
      }
      throw e;
    }
    this.log('instant-restore-started', { session: rec.id, backup: backup.id, volume: target.name, export: rec.export_name, prepareMs: t1 - t0, activateMs: Date.now() - t1 });
    return this.view(rec.id);
  }

  /** opens the target, prepares it (first start) or loads the committed bitmap (resume), exports and starts the copy */
  private async activate(rec: SessionRecord): Promise<void> {
    const { catalog } = this.app;
    const backup = catalog.backupRecord(rec.backup_id);
    const vol = catalog.volume(rec.volume_id);
    const target: VolumeDevice = await this.app.volumeDriver(vol).open('write');
    try {
      if (target.size < backup.size_bytes) throw new ConflictError(`volume ${vol.name} is ${target.size} bytes, smaller than backup ${backup.id} (${backup.size_bytes} bytes)`);
      const bs = rec.block_size;
      const map = catalog.mapReader(backup);
      // the backup as the lower device, read a block at a time (the copier and copy-on-read ask for what they need: no read-ahead)
      const lower = new BackupDevice(backup.size_bytes, backup.chunk_size, map, this.chunks, { readAhead: 0 });
      const source = deviceSource(lower, bs, (b) => lower.isHole(b));
      const initial = await startingOwnership(this.store, rec, target, map, backup.size_bytes);
      rec = initial.rec;
      const id = rec.id;
      const hydrate = new HydrateDevice(target, source, {
        blockSize: bs,
        owned: initial.owned,
        knownZero: initial.knownZero,
        concurrency: rec.copy_concurrency,
        rateBytesPerSec: rec.copy_rate,
        syncIntervalMs: this.config.syncIntervalMs,
        syncBlocks: this.config.syncBlocks,
        commit: (blks, bytesCopied) => this.store.commitBlocks(id, blks, bytesCopied + (this.baseCopied.get(id) ?? 0)),
        log: (event, fields) => this.log(`hydrate-${event}`, { session: id, ...fields }),
        onComplete: () => this.completed(id),
        onError: (e) => void this.failed(id, e),
      });
      this.baseCopied.set(id, rec.bytes_copied);
      this.live.add(id, rec.export_name, hydrate);
      hydrate.start();
    } catch (e) {
      await target.close?.();
      throw e;
    }
  }

  private completed(id: string): void {
    const l = this.live.get(id);
    const stats = l?.hydrate?.stats();
    let rec: SessionRecord;
    try {
      rec = settleSession(this.app, this.store, id, 'completed', null, { bytes_copied: (this.baseCopied.get(id) ?? 0) + (stats?.bytesCopied ?? 0) });
    } catch (e) {
      this.log('instant-restore-error', { session: id, error: (e as Error).message });
      return;
    }
    this.log('instant-restore-completed', { session: id, volume: rec.volume_name, export: rec.export_name, detached: !rec.attached });
    if (l && !rec.attached) {
      l.exported = false;
      if (l.refs === 0) void this.live.close(l);
    }
  }

  private async failed(id: string, e: Error): Promise<void> {
    const l = this.live.get(id);
    const why = `instant restore failed: ${e.message}`;
    this.log('instant-restore-failed', { session: id, error: why });
    if (l) {
      l.exported = false;
      await l.hydrate?.shutdown(why);
    }
    try {
      settleSession(this.app, this.store, id, 'failed', why);
    } catch (err) {
      this.log('instant-restore-error', { session: id, error: (err as Error).message });
    }
    if (l && l.refs === 0) await this.live.close(l);
  }

  private find(ref: string): SessionRecord {
    const rec = this.store.find(ref);
    if (!rec) throw new NotFoundError('instant-restore session', ref);
    return rec;
  }

  async cancel(ref: string): Promise<SessionView> {
    const rec = this.find(ref);
    if (!ACTIVE_STATES.includes(rec.status)) throw new ConflictError(cannotCancel(rec));
    const l = this.live.get(rec.id);
    if (!l) {
      cancelOffline(this.app, rec.id);
      return this.view(rec.id);
    }
    l.exported = false;
    // the copy stops and the export fails every further request: the volume is incomplete
    await l.hydrate?.shutdown(CANCEL_REASON);
    settleSession(this.app, this.store, rec.id, 'cancelled', CANCEL_REASON, { bytes_copied: (this.baseCopied.get(rec.id) ?? 0) + (l.hydrate?.stats().bytesCopied ?? 0) });
    this.log('instant-restore-cancelled', { session: rec.id, volume: rec.volume_name });
    if (l.refs === 0) await this.live.close(l);
    return this.view(rec.id);
  }

  /** stops serving a completed session's export (existing clients keep it until they disconnect) */
  async detach(ref: string): Promise<SessionView> {
    const rec = this.find(ref);
    if (ACTIVE_STATES.includes(rec.status)) throw new ConflictError(`session ${rec.id} is still hydrating volume ${rec.volume_name}; wait for it to complete, or cancel it`);
    if (rec.attached) this.store.update(rec.id, () => ({ attached: false }));
    const l = this.live.get(rec.id);
    if (l) {
      l.exported = false;
      if (l.refs === 0) await this.live.close(l);
    }
    return this.view(rec.id);
  }

  throttle(ref: string, t: { rate?: number; concurrency?: number }): SessionView {
    const rec = this.find(ref);
    if (!ACTIVE_STATES.includes(rec.status)) throw new ConflictError(`session ${rec.id} is ${rec.status}; only a running session copies`);
    if (t.concurrency !== undefined && (!Number.isInteger(t.concurrency) || t.concurrency < 1 || t.concurrency > 256)) throw new RangeError('concurrency must be an integer from 1 to 256');
    if (t.rate !== undefined && (!Number.isFinite(t.rate) || t.rate < 0)) throw new RangeError('rate must be a number of bytes per second (0 = unlimited)');
    this.store.update(rec.id, (s) => ({ copy_rate: t.rate ?? s.copy_rate, copy_concurrency: t.concurrency ?? s.copy_concurrency }));
    this.live.get(rec.id)?.hydrate?.setThrottle(t);
    return this.view(rec.id);
  }

  view(ref: string): SessionView {
    const rec = this.find(ref);
    const v = offlineView(rec, this.uris);
    const l = this.live.get(rec.id);
    if (l?.hydrate && ACTIVE_STATES.includes(rec.status)) liveView(v, l.hydrate, this.baseCopied.get(rec.id) ?? 0);
    if (l && !l.exported) {
      v.uri = null;
      v.unix_uri = null;
    }
    return v;
  }

  views(): SessionView[] {
    return this.store.list().map((s) => this.view(s.id));
  }

  // ------------------------------------------------------------------ export source

  list(): ExportInfo[] {
    return this.live.list();
  }

  open(name: string): Promise<BlockDevice | null> {
    return this.live.open(name);
  }

  release(name: string, dev: BlockDevice): Promise<void> {
    return this.live.release(name, dev);
  }
}
