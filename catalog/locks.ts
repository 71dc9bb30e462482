/**
 * The catalog's locks, in its `locks` database: GC runs alone, writers (backups) register so
 * GC can wait for them, one restore at a time into a volume, and reader leases on backups
 * held open (NBD exports, mounts). Each lock records its owner (catalog/owners.ts); a lock
 * whose owner died is void.
 */
import type { Database, RootDatabase } from 'lmdb';
import { ConflictError, NotFoundError } from './errors.js';
import { ownerAlive, ownerHere } from './owners.js';
import type { BackupRecord, Owner, VolumeRecord } from './records.js';
import { servingSession } from './sessions.js';

/** the databases the locks read and write (the Catalog has them) */
export interface LockStores {
  readonly env: RootDatabase;
  readonly locks: Database<Owner, string>;
  readonly backups: Database<BackupRecord, string>;
  readonly volumes: Database<VolumeRecord, string>;
}

/** Registers a writer; refuses while a garbage collection runs. */
export function registerWriter(c: LockStores, key: string): void {
  c.env.transactionSync(() => {
    const gc = c.locks.get('gc');
    if (gc && ownerAlive(gc)) throw new ConflictError(`garbage collection is running (pid ${gc.pid}); try again when it ends`);
    c.locks.putSync(`w:${key}`, ownerHere());
  });
}

export function unregisterWriter(c: LockStores, key: string): void {
  c.locks.removeSync(`w:${key}`);
}

/** Takes the GC lock; refuses while another GC or any live writer runs. */
export function acquireGc(c: LockStores): void {
  c.env.transactionSync(() => {
    const gc = c.locks.get('gc');
    if (gc && ownerAlive(gc)) throw new ConflictError(`garbage collection already running (pid ${gc.pid})`);
    for (const { key, value } of c.locks.getRange({ start: 'w:', end: 'w;' })) {
      if (ownerAlive(value)) throw new ConflictError(`a backup is being written (${String(key).slice(2)}, pid ${value.pid}); run gc when it ends`);
    }
    c.locks.putSync('gc', ownerHere());
  });
}

export function releaseGc(c: LockStores): void {
  c.locks.removeSync('gc');
}

/** true while a live process holds the restore claim on the volume */
export function anyRestoringInto(c: LockStores, volumeId: string): boolean {
  const o = c.locks.get(`r:${volumeId}`);
  return !!o && ownerAlive(o);
}

/**
 * Marks a volume as the target of a running restore; one at a time per volume. With
 * `idle`, also refuses a volume that is being backed up or still served read-write by an
 * instant-restore session (all in the same transaction as the claim).
 */
export function claimRestoreTarget(c: LockStores, volumeId: string, opts: { idle?: boolean } = {}): void {
  c.env.transactionSync(() => {
    const o = c.locks.get(`r:${volumeId}`);
    if (o && ownerAlive(o)) throw new ConflictError(`a restore into volume ${volumeId} is already running (pid ${o.pid})`);
    if (opts.idle) {
      const v = c.volumes.get(volumeId);
      const name = v?.name ?? volumeId;
      for (const { value: b } of c.backups.getRange({})) {
        if (b.volume_id === volumeId && b.status === 'creating' && (!b.owner || ownerAlive(b.owner))) {
          throw new ConflictError(`volume ${name} is being backed up (backup ${b.id}); restore into it when that ends`);
        }
      }
      const s = servingSession(c.env, volumeId);
      if (s) throw new ConflictError(`volume ${name} is served read-write as export ${s.export_name} by instant-restore session ${s.id}; detach it first`);
    }
    c.locks.putSync(`r:${volumeId}`, ownerHere());
  });
}

export function releaseRestoreTarget(c: LockStores, volumeId: string): void {
  c.locks.removeSync(`r:${volumeId}`);
}

/**
 * Readers (NBD exports, mounts) that hold a backup open; a deleted backup must have none.
 * Adds a reader lease, in one transaction with a check that the backup can be read
 * (available or restoring): a delete, which checks leases in its own transaction, either
 * sees this lease or has already moved the backup on, and then this refuses.
 */
export function addReaderLease(c: LockStores, backupId: string, who: string): string {
  const key = `a:${backupId}:${process.pid}:${who}`;
  c.env.transactionSync(() => {
    const b = c.backups.get(backupId);
    if (!b) throw new NotFoundError('backup', backupId);
    if (b.status !== 'available' && b.status !== 'restoring') throw new ConflictError(`backup ${backupId} is ${b.status}; it cannot be opened`);
    c.locks.putSync(key, ownerHere());
  });
  return key;
}

export function removeReaderLease(c: LockStores, key: string): void {
  c.locks.removeSync(key);
}

export function readerLeases(c: LockStores, backupId: string): string[] {
  const out: string[] = [];
  for (const { key, value } of c.locks.getRange({ start: `a:${backupId}:`, end: `a:${backupId};` })) {
    if (ownerAlive(value)) out.push(String(key).split(':').slice(3).join(':') + ` (pid ${value.pid})`);
  }
  return out;
}
