/**
 * The LMDB catalog: volumes, backups, block-map roots and pages, the chunk index, and the
 * locks that keep garbage collection and writers apart. One LMDB environment, several
 * named databases; every state change that must be atomic is one write transaction.
 * The locks live in catalog/locks.ts, what becomes of a dead process's operations in
 * catalog/recovery.ts, owners and their probing in catalog/owners.ts; the methods here
 * are their entry points.
 */
import fs from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { open, type Database, type RootDatabase } from 'lmdb';
import { MapReader, type PageLoader, pageEntriesFor } from './blockmap.js';
import { FactsCache } from './facts.js';
import { Tallies, watchWrites } from './tally.js';
import { ConflictError, NotFoundError } from './errors.js';
import * as locks from './locks.js';
import { recoverInterrupted } from './recovery.js';
import { type BackupRecord, type BackupStatus, type BackupView, type Owner, type VolumeRecord, isLive, now } from './records.js';

export { ConflictError, NotFoundError } from './errors.js';
export { ownerAlive, ownerHere } from './owners.js';

export interface ChunkInfo {
  /** stored bytes (object size) */
  s: number;
  /** codec id used */
  c: number;
  /** plaintext length */
  n: number;
  /** packed repository: the pack holding it, and its offset there (s bytes long) */
  p?: string;
  o?: number;
}

/** where a map page is in a packed repository (pack, offset, stored length) */
export interface PageLocation {
  p: string;
  o: number;
  s: number;
}

/** a pack this catalog has read: its size and its index (plaintext, drivers/pack.ts), packs never change */
export interface PackRecord {
  s: number;
  i: Buffer;
}

export type BackupFact = Pick<BackupRecord, 'id' | 'project_id' | 'volume_id' | 'status' | 'size'>;

export class Catalog {
  readonly env: RootDatabase;
  readonly volumes: Database<VolumeRecord, string>;
  readonly volumeNames: Database<string, string>;
  readonly backups: Database<BackupRecord, string>;
  readonly maps: Database<Buffer, string>;
  readonly pages: Database<Buffer, string>;
  readonly chunks: Database<ChunkInfo, string>;
  readonly pageLocs: Database<PageLocation, string>;
  readonly packs: Database<PackRecord, string>;
  readonly locks: Database<Owner, string>;
  readonly meta: Database<unknown, string>;
  /** what quota checks and job ends read of every backup, without decoding each record each time */
  readonly backupFacts: FactsCache<BackupRecord, BackupFact>;
  /** per-project counts for quotas, kept with every backup write (catalog/tally.ts) */
  readonly tallies: Tallies;

  constructor(readonly path: string) {
    // the catalog is private to the appliance's user, whatever the umask
    fs.mkdirSync(path, { recursive: true, mode: 0o700 });
    // named databases: the catalog's, instant-restore sessions, jobs, projects, snapshots, services (and room for more)
    this.env = open({ path, mapSize: 64 * 1024 ** 3, maxDbs: 64 });
    for (const f of fs.readdirSync(path)) fs.chmodSync(join(path, f), 0o600);
    this.volumes = this.env.openDB({ name: 'volumes' });
    this.volumeNames = this.env.openDB({ name: 'volume-names' });
    this.tallies = new Tallies(this.env);
    this.backups = watchWrites(this.env, this.env.openDB<BackupRecord, string>({ name: 'backups' }), (id, before, after) => this.tallies.backupWritten(id, before, after));
    this.maps = this.env.openDB({ name: 'maps', encoding: 'binary' });
    this.pages = this.env.openDB({ name: 'pages', encoding: 'binary' });
    this.chunks = this.env.openDB({ name: 'chunks' });
    this.pageLocs = this.env.openDB({ name: 'page-locations' });
    this.packs = this.env.openDB({ name: 'packs' });
    this.locks = this.env.openDB({ name: 'locks' });
    this.meta = this.env.openDB({ name: 'meta' });
    this.backupFacts = new FactsCache(this.env, 'backups', this.backups, (b) => ({ id: b.id, project_id: b.project_id, volume_id: b.volume_id, status: b.status, size: b.size }));
  }

  async close(): Promise<void> {
    await this.env.close();
  }

  /** Ties the catalog to one repository; a catalog never mixes two. */
  bindRepository(repoId: string, location: string): void {
    const bound = this.meta.get('repository') as { id: string; location: string } | undefined;
    if (bound && bound.id !== repoId) {
      throw new ConflictError(`this catalog belongs to repository ${bound.id} (${bound.location}), not ${repoId} (${location})`);
    }
    if (!bound) this.meta.putSync('repository', { id: repoId, location });
  }

  // ---- volumes

  volume(ref: string): VolumeRecord {
    const v = this.volumes.get(ref) ?? this.volumes.get(this.volumeNames.get(ref) ?? '');
    if (!v) throw new NotFoundError('volume', ref);
    return v;
  }

  listVolumes(): VolumeRecord[] {
    return [...this.volumes.getRange({})].map((e) => e.value).sort((a, b) => a.created_at.localeCompare(b.created_at));
  }

  addVolume(v: Omit<VolumeRecord, 'id' | 'created_at' | 'updated_at'>): VolumeRecord {
    const rec: VolumeRecord = { ...v, id: randomUUID(), created_at: now(), updated_at: now() };
    this.env.transactionSync(() => {
      if (this.volumeNames.get(v.name) !== undefined) throw new ConflictError(`a volume named "${v.name}" already exists`);
      this.volumes.putSync(rec.id, rec);
      this.volumeNames.putSync(rec.name, rec.id);
    });
    return rec;
  }

  updateVolume(id: string, change: (v: VolumeRecord) => Partial<VolumeRecord> | void): VolumeRecord {
    let out!: VolumeRecord;
    this.env.transactionSync(() => {
      const v = this.volumes.get(id);
      if (!v) throw new NotFoundError('volume', id);
      out = { ...v, ...(change(v) ?? {}), updated_at: now() };
      this.volumes.putSync(id, out);
    });
    return out;
  }

  removeVolume(id: string): void {
    this.env.transactionSync(() => {
      const v = this.volumes.get(id);
      if (!v) throw new NotFoundError('volume', id);
      this.volumes.removeSync(id);
      this.volumeNames.removeSync(v.name);
    });
  }

  // ---- backups

  backupRecord(ref: string): BackupRecord {
    const b = this.backups.get(ref);
    if (b) return b;
    const byName = this.listBackups().filter((x) => x.name === ref && x.status !== 'deleted');
    if (byName.length === 1) return byName[0]!;
    if (byName.length > 1) throw new ConflictError(`${byName.length} backups are named "${ref}": use the backup id`);
    throw new NotFoundError('backup', ref);
  }

  view(b: BackupRecord): BackupView {
    const { owner: _owner, ...rest } = b;
    const dependents = this.listBackups().some((x) => x.parent_id === b.id && x.status !== 'deleted');
    return { ...rest, has_dependent_backups: dependents };
  }

  listBackups(volumeId?: string): BackupRecord[] {
    const all = [...this.backups.getRange({})].map((e) => e.value);
    return all.filter((b) => !volumeId || b.volume_id === volumeId).sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id));
  }

  /** The newest available backup of a volume (the parent of an incremental, as in Cinder). */
  latestAvailable(volumeId: string): BackupRecord | undefined {
    return this.listBackups(volumeId).filter((b) => b.status === 'available').at(-1);
  }

  putBackup(b: BackupRecord): void {
    this.backups.putSync(b.id, b);
  }

  /**
   * Moves a backup from one of `from` states to `to` in one transaction; anything else is a
   * ConflictError that says which state it is in.
   */
  transition(id: string, from: BackupStatus[], to: BackupStatus, change: Partial<BackupRecord> = {}): BackupRecord {
    let out!: BackupRecord;
    this.env.transactionSync(() => {
      const b = this.backups.get(id);
      if (!b) throw new NotFoundError('backup', id);
      if (!from.includes(b.status)) throw new ConflictError(`backup ${b.id} is ${b.status}; it must be ${from.join(' or ')}`);
      out = { ...b, ...change, status: to, updated_at: now() };
      this.backups.putSync(id, out);
    });
    return out;
  }

  /** Commits a finished backup: its map root and record, in one transaction. */
  commitBackup(b: BackupRecord, root: Buffer): BackupRecord {
    let out!: BackupRecord;
    this.env.transactionSync(() => {
      const cur = this.backups.get(b.id);
      if (!cur || cur.status !== 'creating') throw new ConflictError(`backup ${b.id} is ${cur?.status ?? 'gone'}; it was cancelled`);
      out = { ...b, status: 'available', owner: null, updated_at: now() };
      this.maps.putSync(b.id, root);
      this.backups.putSync(b.id, out);
    });
    return out;
  }

  mapRoot(backupId: string): Buffer {
    const root = this.maps.get(backupId);
    if (!root) throw new NotFoundError('block map of backup', backupId);
    return root;
  }

  readonly loadPage: PageLoader = (digest) => {
    const p = this.pages.get(digest);
    if (!p) throw new Error(`block-map page ${digest} missing from the catalog`);
    return p;
  };

  mapReader(b: BackupRecord): MapReader {
    return new MapReader(this.mapRoot(b.id), Math.ceil(b.size_bytes / b.chunk_size), this.loadPage, pageEntriesFor(b.chunk_size));
  }

  // ---- chunk index and pages

  chunk(digest: string): ChunkInfo | undefined {
    return this.chunks.get(digest);
  }

  // ---- locks (catalog/locks.ts): GC runs alone; writers (backups) register so GC can wait for them

  /** Registers a writer; refuses while a garbage collection runs. */
  registerWriter(key: string): void {
    locks.registerWriter(this, key);
  }

  unregisterWriter(key: string): void {
    locks.unregisterWriter(this, key);
  }

  /** Takes the GC lock; refuses while another GC or any live writer runs. */
  acquireGc(): void {
    locks.acquireGc(this);
  }

  releaseGc(): void {
    locks.releaseGc(this);
  }

  /** Settles the operations of processes that died (catalog/recovery.ts). */
  recoverInterrupted(): BackupRecord[] {
    return recoverInterrupted(this);
  }

  /** Marks a volume as the target of a running restore; one at a time per volume (see locks.claimRestoreTarget). */
  claimRestoreTarget(volumeId: string, opts: { idle?: boolean } = {}): void {
    locks.claimRestoreTarget(this, volumeId, opts);
  }

  releaseRestoreTarget(volumeId: string): void {
    locks.releaseRestoreTarget(this, volumeId);
  }

  /** A reader lease on a backup that can be read (NBD exports, mounts); a deleted backup must have none. */
  addReaderLease(backupId: string, who: string): string {
    return locks.addReaderLease(this, backupId, who);
  }

  removeReaderLease(key: string): void {
    locks.removeReaderLease(this, key);
  }

  readerLeases(backupId: string): string[] {
    return locks.readerLeases(this, backupId);
  }

  // ---- chunks found corrupt by verify: never deduplicated onto, never carried into a new map

  markCorrupt(digest: string): void {
    this.meta.putSync(`corrupt:${digest}`, now());
  }

  /** (inside a write transaction, with the index entry of the chunk written anew) */
  clearCorrupt(digest: string): void {
    if (this.meta.get(`corrupt:${digest}`) !== undefined) void this.meta.remove(`corrupt:${digest}`);
  }

  isCorrupt(digest: string): boolean {
    return this.meta.get(`corrupt:${digest}`) !== undefined;
  }

  /** true if verify found any chunk corrupt that no backup has written anew since */
  anyCorrupt(): boolean {
    for (const _ of this.meta.getKeys({ start: 'corrupt:', end: 'corrupt;' })) return true;
    return false;
  }

  liveBackups(): BackupRecord[] {
    return this.listBackups().filter((b) => isLive(b.status));
  }
}
