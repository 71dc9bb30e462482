/**
 * Instant-restore sessions as the catalog holds them, and what needs no daemon: whether the
 * daemon that ran a session is gone, settling a session's end (session, backup and volume
 * states in one transaction, as Cinder's: `available` on completion, the volume
 * `error_restoring` with the reason otherwise), and cancelling a session whose daemon is gone.
 */
import fs from 'node:fs';
import { ConflictError, NotFoundError, ownerAlive } from '../../catalog/catalog.js';
import { type Owner, now } from '../../catalog/records.js';
import { ACTIVE_STATES, type SessionRecord, SessionStore } from '../../catalog/sessions.js';
import type { Appliance } from '../appliance.js';

export const CANCEL_REASON = 'instant restore cancelled: volume incomplete';

/** the owner ended (a killed daemon not yet reaped by its parent is a zombie: it counts as ended) */
export function ownerGone(o: Owner | null | undefined): boolean {
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

/** why rec cannot be cancelled (it is not running) */
export function cannotCancel(rec: SessionRecord): string {
  if (rec.status === 'completed') return `session ${rec.id} already completed: volume ${rec.volume_name} is complete${rec.attached ? `; to stop serving it: blockgate restore detach ${rec.id}` : ''}`;
  return `session ${rec.id} is ${rec.status}; only a running session can be cancelled`;
}
