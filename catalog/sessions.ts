/**
 * Instant-restore sessions in the catalog: one record per session (named db
 * `instant-sessions`) and its ownership bitmap (named db `instant-bitmaps`, pages of
 * 4096 bytes = 32768 blocks, keyed `<session>:<page>`), so that the set of blocks the target
 * owns survives a crash of the daemon and the session resumes where it was.
 *
 * A bit is set here only after the block's data is durable on the target (see
 * gateway/devices/hydrate.ts for the ordering argument); commitBlocks() is one LMDB write
 * transaction and resolves once that transaction is flushed to disk.
 */
import { randomUUID } from 'node:crypto';
import type { Database, RootDatabase } from 'lmdb';
import type { Owner } from './records.js';

export const SESSIONS_DB = 'instant-sessions';
export const BITMAPS_DB = 'instant-bitmaps';
const PAGE_BYTES = 4096;
const PAGE_BITS = PAGE_BYTES * 8;

/**
 * starting: claimed, target being prepared (not exported yet); running: exported and hydrating;
 * completed: every block owned (export kept while `attached`); cancelled / failed: the copy
 * stopped and the target is incomplete (volume `error_restoring`).
 */
export type SessionStatus = 'starting' | 'running' | 'completed' | 'cancelled' | 'failed';

export interface SessionRecord {
  id: string;
  backup_id: string;
  backup_name: string;
  volume_id: string;
  volume_name: string;
  export_name: string;
  status: SessionStatus;
  /** the NBD export is served (false after detach, cancel, failure) */
  attached: boolean;
  detach_on_complete: boolean;
  /** ownership granularity: the backup's chunk size */
  block_size: number;
  blocks_total: number;
  /** blocks whose ownership is committed (durable) */
  blocks_durable: number;
  /** bytes of the target */
  size_bytes: number;
  /** bytes brought in from the backup (copier and copy-on-read), as of the last commit */
  bytes_copied: number;
  /** background copy: parallel block copies, and bytes/s (0 = unlimited) */
  copy_concurrency: number;
  copy_rate: number;
  status_reason: string | null;
  owner: Owner | null;
  /** times the session was resumed after its daemon ended */
  resumes: number;
  created_at: string;
  updated_at: string;
  completed_at: string | null;
}

export const ACTIVE_STATES: SessionStatus[] = ['starting', 'running'];

const now = (): string => new Date().toISOString();
const pageKey = (id: string, page: number): string => `${id}:${String(page).padStart(8, '0')}`;

/** Sessions that a daemon restart resumes: recovery must leave their backup and volume alone. */
export function resumableRestores(env: RootDatabase): { backups: Set<string>; volumes: Set<string> } {
  const db = env.openDB<SessionRecord, string>({ name: SESSIONS_DB });
  const out = { backups: new Set<string>(), volumes: new Set<string>() };
  for (const { value: s } of db.getRange({})) {
    if (!ACTIVE_STATES.includes(s.status)) continue;
    out.backups.add(s.backup_id);
    out.volumes.add(s.volume_id);
  }
  return out;
}

/** A session that still serves a volume read-write (running, or completed and attached), if any. */
export function servingSession(env: RootDatabase, volumeId: string): SessionRecord | undefined {
  const db = env.openDB<SessionRecord, string>({ name: SESSIONS_DB });
  for (const { value: s } of db.getRange({})) {
    if (s.volume_id === volumeId && (ACTIVE_STATES.includes(s.status) || (s.status === 'completed' && s.attached))) return s;
  }
  return undefined;
}

export class SessionStore {
  readonly db: Database<SessionRecord, string>;
  readonly bitmaps: Database<Buffer, string>;

  constructor(readonly env: RootDatabase) {
    this.db = env.openDB<SessionRecord, string>({ name: SESSIONS_DB });
    this.bitmaps = env.openDB<Buffer, string>({ name: BITMAPS_DB, encoding: 'binary' });
  }

  get(id: string): SessionRecord | undefined {
    return this.db.get(id);
  }

  list(): SessionRecord[] {
    return [...this.db.getRange({})].map((e) => e.value).sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id));
  }

  /** by id, id prefix (unique), export name or volume name (the newest session of it) */
  find(ref: string): SessionRecord | undefined {
    const exact = this.get(ref);
    if (exact) return exact;
    const all = this.list();
    const byPrefix = ref.length >= 6 ? all.filter((s) => s.id.startsWith(ref)) : [];
    if (byPrefix.length === 1) return byPrefix[0];
    return all.filter((s) => s.export_name === ref || s.volume_name === ref).at(-1);
  }

  create(fields: Omit<SessionRecord, 'id' | 'created_at' | 'updated_at' | 'completed_at' | 'resumes' | 'blocks_durable' | 'bytes_copied'>): SessionRecord {
    const rec: SessionRecord = { ...fields, id: randomUUID(), blocks_durable: 0, bytes_copied: 0, resumes: 0, created_at: now(), updated_at: now(), completed_at: null };
    this.db.putSync(rec.id, rec);
    return rec;
  }

  /** changes a record in one transaction (inside an outer transaction when called from one) */
  update(id: string, change: (s: SessionRecord) => Partial<SessionRecord>): SessionRecord {
    let out!: SessionRecord;
    this.env.transactionSync(() => {
      const s = this.db.get(id);
      if (!s) throw new Error(`instant-restore session ${id} not found`);
      out = { ...s, ...change(s), updated_at: now() };
      this.db.putSync(id, out);
    });
    return out;
  }

  /** the committed ownership bitmap, one byte (0/1) per block */
  loadOwned(id: string, blocks: number): Uint8Array {
    const owned = new Uint8Array(blocks);
    for (let p = 0; p * PAGE_BITS < blocks; p++) {
      const page = this.bitmaps.get(pageKey(id, p));
      if (!page) continue;
      const first = p * PAGE_BITS;
      for (let b = first; b < Math.min(blocks, first + PAGE_BITS); b++) {
        const bit = b - first;
        if (page[bit >> 3]! & (1 << (bit & 7))) owned[b] = 1;
      }
    }
    return owned;
  }

  /** replaces the whole bitmap (session start) and applies `change` to the record, in one transaction */
  async initialize(id: string, owned: Uint8Array, change: Partial<SessionRecord>): Promise<SessionRecord> {
    let out!: SessionRecord;
    this.env.transactionSync(() => {
      for (const { key } of this.bitmaps.getRange({ start: `${id}:`, end: `${id};` })) this.bitmaps.removeSync(key);
      let count = 0;
      for (let p = 0; p * PAGE_BITS < owned.length; p++) {
        const page = Buffer.alloc(PAGE_BYTES);
        let any = false;
        for (let b = p * PAGE_BITS; b < Math.min(owned.length, (p + 1) * PAGE_BITS); b++) {
          if (!owned[b]) continue;
          const bit = b - p * PAGE_BITS;
          page[bit >> 3]! |= 1 << (bit & 7);
          any = true;
          count++;
        }
        if (any) this.bitmaps.putSync(pageKey(id, p), page);
      }
      const s = this.db.get(id);
      if (!s) throw new Error(`instant-restore session ${id} not found`);
      out = { ...s, ...change, blocks_durable: count, updated_at: now() };
      this.db.putSync(id, out);
    });
    await this.env.flushed;
    return out;
  }

  /**
   * Marks blocks owned, durably: one transaction sets their bits and updates the record's
   * counters; resolves when it is flushed to disk. The caller has made their data durable on
   * the target first.
   */
  async commitBlocks(id: string, blocks: number[], bytesCopied: number): Promise<void> {
    if (blocks.length) {
      this.env.transactionSync(() => {
        const pages = new Map<number, Buffer>();
        let added = 0;
        for (const b of blocks) {
          const p = Math.floor(b / PAGE_BITS);
          let page = pages.get(p);
          if (!page) {
            const cur = this.bitmaps.get(pageKey(id, p));
            page = cur ? Buffer.from(cur) : Buffer.alloc(PAGE_BYTES);
            pages.set(p, page);
          }
          const bit = b - p * PAGE_BITS;
          if (!(page[bit >> 3]! & (1 << (bit & 7)))) {
            page[bit >> 3]! |= 1 << (bit & 7);
            added++;
          }
        }
        for (const [p, page] of pages) this.bitmaps.putSync(pageKey(id, p), page);
        const s = this.db.get(id);
        if (s) this.db.putSync(id, { ...s, blocks_durable: s.blocks_durable + added, bytes_copied: Math.max(s.bytes_copied, bytesCopied), updated_at: now() });
      });
    }
    await this.env.flushed;
  }

  /** drops a finished session's bitmap (the record stays, for `restore list`) */
  dropBitmap(id: string): void {
    this.env.transactionSync(() => {
      for (const { key } of this.bitmaps.getRange({ start: `${id}:`, end: `${id};` })) this.bitmaps.removeSync(key);
    });
  }
}
