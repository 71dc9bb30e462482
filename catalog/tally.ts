/**
 * Per-project tallies for quotas, in the catalog database `projects`, kept in the same
 * transaction as every change they count, so a quota check reads three keys instead of every
 * backup and every reservation:
 *
 *   tally:used:<project>   live backups (not deleted): count and GiB
 *   tally:held:<project>   reservations: count and GiB
 *   tally:cov:<project>    live backups a reservation names (counted as reserved, not in use)
 *   resb:<backup>          the reservation naming that backup
 *
 * The catalog's backups database is watched (watchWrites): each put or remove of a backup
 * record adjusts `used` (and `cov`) in its transaction. Reservations adjust `held` and `cov`
 * (catalog/quotas.ts). A catalog without the tallies (made before them) has them built from
 * every record once, when the quota store opens it.
 */
import type { Database, RootDatabase } from 'lmdb';

export interface Tally {
  n: number;
  gb: number;
}

export type TallyKind = 'used' | 'held' | 'cov';

interface Counted {
  project_id: string;
  status: string;
  size: number;
}

const BUILT = 'tally:built';

export class Tallies {
  readonly db: Database<unknown, string>;

  constructor(env: RootDatabase) {
    this.db = env.openDB<unknown, string>({ name: 'projects' });
  }

  get(kind: TallyKind, project: string): Tally {
    return (this.db.get(`tally:${kind}:${project}`) as Tally | undefined) ?? { n: 0, gb: 0 };
  }

  /** (inside a write transaction) */
  add(kind: TallyKind, project: string, n: number, gb: number): void {
    const t = this.get(kind, project);
    this.db.putSync(`tally:${kind}:${project}`, { n: t.n + n, gb: t.gb + gb });
  }

  /** (inside the transaction that writes the record) a backup record changed from `before` to `after` */
  backupWritten(id: string, before: Counted | undefined, after: Counted | undefined): void {
    const a = before && before.status !== 'deleted' ? before : undefined;
    const b = after && after.status !== 'deleted' ? after : undefined;
    if (a?.project_id === b?.project_id && a?.size === b?.size) return;
    const covered = this.db.get(`resb:${id}`) !== undefined;
    for (const [x, sign] of [[a, -1], [b, 1]] as const) {
      if (!x) continue;
      this.add('used', x.project_id, sign, sign * x.size);
      if (covered) this.add('cov', x.project_id, sign, sign * x.size);
    }
  }

  built(): boolean {
    return this.db.get(BUILT) !== undefined;
  }

  /** (inside a write transaction) every tally anew from the records */
  rebuild(backups: Iterable<Counted & { id: string }>, reservations: Iterable<{ project: string; backups: number; gigabytes: number; backup_id: string | null; id: string }>): void {
    for (const key of [...this.db.getKeys({ start: 'tally:', end: 'tally;' })]) this.db.removeSync(key);
    for (const key of [...this.db.getKeys({ start: 'resb:', end: 'resb;' })]) this.db.removeSync(key);
    const live = new Map<string, Counted>();
    for (const b of backups) {
      if (b.status === 'deleted') continue;
      live.set(b.id, b);
      this.add('used', b.project_id, 1, b.size);
    }
    for (const r of reservations) {
      this.add('held', r.project, r.backups, r.gigabytes);
      if (!r.backup_id) continue;
      this.db.putSync(`resb:${r.backup_id}`, r.id);
      const b = live.get(r.backup_id);
      if (b) this.add('cov', b.project_id, 1, b.size);
    }
    this.db.putSync(BUILT, new Date().toISOString());
  }
}

/**
 * The database, with every put and remove also telling `onWrite` the record before and after,
 * in the write's transaction (a put outside one becomes a synchronous transaction of its own).
 */
export function watchWrites<V>(env: RootDatabase, db: Database<V, string>, onWrite: (id: string, before: V | undefined, after: V | undefined) => void): Database<V, string> {
  const write = (id: string, after: V | undefined, op: () => unknown): unknown => {
    let out: unknown;
    env.transactionSync(() => {
      const before = db.get(id);
      out = op();
      onWrite(id, before, after);
    });
    return out;
  };
  const wrapped: Record<string, unknown> = {
    put: (id: string, v: V, ...rest: unknown[]) => write(id, v, () => (db.put as (...a: unknown[]) => unknown)(id, v, ...rest)),
    putSync: (id: string, v: V, ...rest: unknown[]) => write(id, v, () => (db.putSync as (...a: unknown[]) => unknown)(id, v, ...rest)),
    remove: (id: string, ...rest: unknown[]) => write(id, undefined, () => (db.remove as (...a: unknown[]) => unknown)(id, ...rest)),
    removeSync: (id: string, ...rest: unknown[]) => write(id, undefined, () => (db.removeSync as (...a: unknown[]) => unknown)(id, ...rest)),
  };
  return new Proxy(db, {
    get(target, prop) {
      if (typeof prop === 'string' && Object.hasOwn(wrapped, prop)) return wrapped[prop];
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
