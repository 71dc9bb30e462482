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
 */
import fs from 'node:fs';
import { ConflictError, NotFoundError, ownerAlive, ownerHere } from '../../catalog/catalog.js';
import { type Owner, now } from '../../catalog/records.js';
import { ACTIVE_STATES, type SessionRecord, SessionStore } from '../../catalog/sessions.js';
import type { BlockDevice } from '../../nbd/blockdev.js';
import type { ExportInfo } from '../../nbd/server.js';
import type { VolumeDevice } from '../../drivers/volume/types.js';
import type { Appliance } from '../appliance.js';
import { HydrateDevice, type HydrateSource } from '../devices/hydrate.js';
import { prepareRestore } from '../engine/restore.js';
import type { ExportSource } from '../exports/registry.js';
import type { ChunkReader } from '../read/chunk-reader.js';

export const CANCEL_REASON = 'instant restore cancelled: volume incomplete';

/** the owner ended (a killed daemon not yet reaped by its parent is a zombie: it counts as ended) */
function ownerGone(o: Owner | null | undefined): boolean {
  if (!o || !ownerAlive(o)) return true;
  if (o.pid === process.pid) return false;
  try {
    const stat = fs.readFileSync(`/proc/${o.pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state === 'Z' || state === 'X';
  } catch {
    return false;
  }
}

export interface InstantConfig {
  /** parallel block copies per session */
  concurrency: number;
  /** bytes/s per session, 0 = unlimited */
  rate: number;
  /** commit copied blocks at least this often */
  syncIntervalMs: number;
  /** ...or every this many blocks */
  syncBlocks: number;
}

/** `"instant": { "concurrency": 6, "rate": 0, "syncIntervalMs": 1000, "syncBlocks": 256 }` in blockgate.json */
export function instantConfig(app: Appliance): InstantConfig {
  const c = ((app.config as unknown as { instant?: Partial<InstantConfig> }).instant ?? {}) as Partial<InstantConfig>;
  const num = (v: unknown, d: number) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : d);
  return {
    concurrency: Math.max(1, Math.floor(num(c.concurrency, app.config.pipelineDepth || 6))),
    rate: num(c.rate, 0),
    syncIntervalMs: Math.max(10, num(c.syncIntervalMs, 1000)),
    syncBlocks: Math.max(1, Math.floor(num(c.syncBlocks, 256))),
  };
}

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

export interface SessionView {
  id: string;
  status: string;
  backup_id: string;
  backup_name: string;
  volume_id: string;
  volume_name: string;
  export_name: string;
  uri: string | null;
  unix_uri: string | null;
  attached: boolean;
  blocks_owned: number;
  blocks_durable: number;
  blocks_total: number;
  percent: number;
  block_size: number;
  size_bytes: number;
  bytes_copied: number;
  /** bytes/s brought in over the last seconds (0 when no daemon runs it) */
  rate_bps: number;
  copy_rate: number;
  copy_concurrency: number;
  guest_reads_from_backup: number;
  detach_on_complete: boolean;
  resumes: number;
  served_by_pid: number | null;
  created_at: string;
  completed_at: string | null;
  status_reason: string | null;
}

export type Address = () => { host: string; port: number; socket: string };
export type UriMaker = (name: string) => { tcp: string; unix: string | null };
type Log = (event: string, fields: Record<string, unknown>) => void;

interface Live {
  id: string;
  exportName: string;
  /** the hydrating device; null for a completed session re-served after a restart (opened on demand) */
  hydrate: HydrateDevice | null;
  /** what clients get: the hydrate device, or the plain target */
  dev: BlockDevice | null;
  refs: number;
  /** served under its export name */
  exported: boolean;
  closing: Promise<void> | null;
}

/** Settles a session that ends: catalog states of session, backup and volume, in one transaction. */
export function settleSession(app: Appliance, store: SessionStore, id: string, outcome: 'completed' | 'cancelled' | 'failed', reason: string | null, extra: Partial<SessionRecord> = {}): SessionRecord {
  const { catalog } = app;
  let out!: SessionRecord;
  catalog.env.transactionSync(() => {
    const s = store.db.get(id);
    if (!s) throw new NotFoundError('instant-restore session', id);
    if (!ACTIVE_STATES.includes(s.status)) throw new ConflictError(`session ${id} is already ${s.status}`);
    const b = catalog.backups.get(s.backup_id);
    if (b && b.status === 'restoring') catalog.backups.putSync(b.id, { ...b, status: 'available', owner: null, updated_at: now() });
    const v = catalog.volumes.get(s.volume_id);
    if (v) {
      const ok = outcome === 'completed';
      catalog.volumes.putSync(v.id, { ...v, status: ok ? 'available' : 'error_restoring', status_reason: ok ? null : reason, updated_at: now() });
    }
    catalog.releaseRestoreTarget(s.volume_id);
    out = {
      ...s,
      ...extra,
      status: outcome,
      status_reason: reason,
      owner: null,
      attached: outcome === 'completed' ? (extra.attached ?? !s.detach_on_complete) : false,
      blocks_durable: outcome === 'completed' ? s.blocks_total : s.blocks_durable,
      completed_at: now(),
      updated_at: now(),
    };
    store.db.putSync(id, out);
  });
  store.dropBitmap(id);
  return out;
}

/** A session view from the catalog alone (no daemon runs it, or it is not live here). */
export function offlineView(rec: SessionRecord, uris?: UriMaker): SessionView {
  const u = uris && rec.attached && (rec.status === 'running' || rec.status === 'completed') ? uris(rec.export_name) : null;
  const owned = rec.status === 'completed' ? rec.blocks_total : rec.blocks_durable;
  return {
    id: rec.id,
    status: rec.status,
    backup_id: rec.backup_id,
    backup_name: rec.backup_name,
    volume_id: rec.volume_id,
    volume_name: rec.volume_name,
    export_name: rec.export_name,
    uri: u?.tcp ?? null,
    unix_uri: u?.unix ?? null,
    attached: rec.attached,
    blocks_owned: owned,
    blocks_durable: owned,
    blocks_total: rec.blocks_total,
    percent: rec.blocks_total ? Math.floor((owned / rec.blocks_total) * 1000) / 10 : 0,
    block_size: rec.block_size,
    size_bytes: rec.size_bytes,
    bytes_copied: rec.bytes_copied,
    rate_bps: 0,
    copy_rate: rec.copy_rate,
    copy_concurrency: rec.copy_concurrency,
    guest_reads_from_backup: 0,
    detach_on_complete: rec.detach_on_complete,
    resumes: rec.resumes,
    served_by_pid: rec.owner && !ownerGone(rec.owner) ? rec.owner.pid : null,
    created_at: rec.created_at,
    completed_at: rec.completed_at,
    status_reason: rec.status_reason,
  };
}

/** Cancels a session no daemon runs (its daemon is gone): the catalog is settled directly. */
export function cancelOffline(app: Appliance, ref: string): SessionRecord {
  const store = new SessionStore(app.catalog.env);
  const rec = store.find(ref);
  if (!rec) throw new NotFoundError('instant-restore session', ref);
  if (!ACTIVE_STATES.includes(rec.status)) throw new ConflictError(cannotCancel(rec));
  if (!ownerGone(rec.owner) && rec.owner!.pid !== process.pid) {
    throw new ConflictError(`session ${rec.id} is run by the daemon with pid ${rec.owner!.pid}; cancel it through that daemon`);
  }
  return settleSession(app, store, rec.id, 'cancelled', CANCEL_REASON);
}

function cannotCancel(rec: SessionRecord): string {
  if (rec.status === 'completed') return `session ${rec.id} already completed: volume ${rec.volume_name} is complete${rec.attached ? `; to stop serving it: blockgate restore detach ${rec.id}` : ''}`;
  return `session ${rec.id} is ${rec.status}; only a running session can be cancelled`;
}

export class InstantRestores implements ExportSource {
  readonly store: SessionStore;
  private readonly live = new Map<string, Live>();
  private watch: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(
    private readonly app: Appliance,
    private readonly chunks: ChunkReader,
    private readonly uris: UriMaker,
    private readonly log: Log = () => {},
  ) {
    this.store = new SessionStore(app.catalog.env);
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
        this.live.set(rec.id, { id: rec.id, exportName: rec.export_name, hydrate: null, dev: null, refs: 0, exported: true, closing: null });
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
    this.stopped = true;
    if (this.watch) clearInterval(this.watch);
    for (const l of [...this.live.values()]) {
      l.exported = false;
      await this.closeLive(l);
    }
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
    if (this.stopped) throw new ConflictError('the daemon is stopping');
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
      const blocks = Math.ceil(target.size / bs);
      const backupBlocks = Math.ceil(backup.size_bytes / bs);
      const map = catalog.mapReader(backup);
      const source: HydrateSource = {
        size: backup.size_bytes,
        isHole: (b) => b >= backupBlocks || map.entry(b) === null,
        read: async (b) => {
          const digest = map.entry(b);
          return digest === null ? null : this.chunks.read(digest);
        },
      };
      let owned: Uint8Array;
      let knownZero: Uint8Array | undefined;
      if (rec.status === 'starting') {
        // nothing was exported yet: make a file target sparse, so every hole of the backup
        // (and whatever lies past its end) already reads as zeroes and is owned from the start
        const sparse = target.sparseFile && typeof (target as unknown as { makeSparse?: unknown }).makeSparse === 'function';
        if (sparse) await (target as unknown as { makeSparse(): Promise<void> }).makeSparse();
        owned = new Uint8Array(blocks);
        for (let b = 0; b < blocks; b++) {
          if (b >= backupBlocks) owned[b] = 1; // past the backup: the target's own bytes, as a plain restore leaves them
          else if (sparse && map.entry(b) === null) owned[b] = 1;
        }
        knownZero = sparse ? new Uint8Array(blocks).fill(1) : undefined; // the whole file was just truncated
        await target.flush?.();
        rec = await this.store.initialize(rec.id, owned, { status: 'running', blocks_total: blocks, size_bytes: target.size });
      } else {
        owned = this.store.loadOwned(rec.id, blocks);
      }
      const id = rec.id;
      const hydrate = new HydrateDevice(target, source, {
        blockSize: bs,
        owned,
        knownZero,
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
      this.live.set(id, { id, exportName: rec.export_name, hydrate, dev: hydrate, refs: 0, exported: true, closing: null });
      hydrate.start();
    } catch (e) {
      await target.close?.();
      throw e;
    }
  }

  /** bytes copied by earlier runs of a resumed session */
  private readonly baseCopied = new Map<string, number>();

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
      if (l.refs === 0) void this.closeLive(l);
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
    if (l && l.refs === 0) await this.closeLive(l);
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
    if (l.refs === 0) await this.closeLive(l);
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
      if (l.refs === 0) await this.closeLive(l);
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
    if (l?.hydrate && ACTIVE_STATES.includes(rec.status)) {
      const s = l.hydrate.stats();
      v.blocks_owned = s.blocksOwned;
      v.blocks_durable = s.blocksDurable;
      v.percent = s.blocksTotal ? Math.floor((s.blocksOwned / s.blocksTotal) * 1000) / 10 : 0;
      v.bytes_copied = (this.baseCopied.get(rec.id) ?? 0) + s.bytesCopied;
      v.rate_bps = Math.round(s.rate);
      v.guest_reads_from_backup = s.guestReadsFromBackup;
      const th = l.hydrate.throttle;
      v.copy_rate = th.rate;
      v.copy_concurrency = th.concurrency;
    }
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
    const out: ExportInfo[] = [];
    for (const l of this.live.values()) {
      if (!l.exported) continue;
      const rec = this.store.get(l.id);
      if (!rec) continue;
      const what = rec.status === 'completed' ? 'restored' : 'instant restore (hydrating)';
      out.push({ name: l.exportName, description: `volume ${rec.volume_name}: ${what} from backup ${rec.backup_name} (${rec.backup_id}), read-write` });
    }
    return out;
  }

  async open(name: string): Promise<BlockDevice | null> {
    for (const l of this.live.values()) {
      if (l.exportName !== name || !l.exported || l.closing) continue;
      if (!l.dev) {
        // a completed session re-served after a restart: the plain target
        const rec = this.store.get(l.id)!;
        const vol = this.app.catalog.volume(rec.volume_id);
        l.dev = await this.app.volumeDriver(vol).open('write');
      }
      l.refs++;
      return l.dev;
    }
    return null;
  }

  async release(_name: string, dev: BlockDevice): Promise<void> {
    for (const l of this.live.values()) {
      if (l.dev !== dev) continue;
      l.refs--;
      if (l.refs > 0) return;
      if (!l.exported || !l.hydrate) await this.closeLive(l);
      return;
    }
  }

  private closeLive(l: Live): Promise<void> {
    l.closing ??= (async () => {
      try {
        if (l.hydrate) await l.hydrate.close();
        else await l.dev?.close?.();
      } catch (e) {
        this.log('instant-restore-error', { session: l.id, error: (e as Error).message });
      }
      if (l.exported && !this.stopped) {
        // a lazily opened target of a completed session: closed while idle, still served
        l.dev = null;
        l.closing = null;
        return;
      }
      this.live.delete(l.id);
    })();
    return l.closing;
  }
}
