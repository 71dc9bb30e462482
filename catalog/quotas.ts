/**
 * Per-project quotas (Cinder's `backups` and `backup_gigabytes`, defaults 10 and 1000) and
 * reservations, in the catalog database `projects`:
 *
 *   quota:<project>   the project's limits that differ from the defaults
 *   res:<id>          a reservation {project, backups, gigabytes, backup_id, owner}
 *
 * A create or import reserves in one LMDB write transaction that sees every backup and every
 * other reservation, so concurrent creates (in this process or another) cannot overshoot; the
 * reservation ends when the job does (commit: the backup now counts as in use; release: a
 * cancelled one counts nowhere). `in_use` counts the project's backups that are not deleted and
 * not covered by a reservation; `reserved` the reservations. A reservation whose process died
 * is dropped by recovery.
 */
import type { Database, RootDatabase } from 'lmdb';
import { randomUUID } from 'node:crypto';
import { ownerAlive, ownerHere } from './owners.js';
import { type Owner, now } from './records.js';
import { FactsCache } from './facts.js';
import type { Tallies } from './tally.js';

type Counted = { project_id: string; status: string; size: number };

export const QUOTA_KEYS = ['backups', 'backup_gigabytes'] as const;
export type QuotaKey = (typeof QUOTA_KEYS)[number];
export type Limits = Record<QuotaKey, number>;
export const QUOTA_DEFAULTS: Limits = { backups: 10, backup_gigabytes: 1000 };

export interface Reservation {
  id: string;
  project: string;
  backups: number;
  gigabytes: number;
  backup_id: string | null;
  owner: Owner;
  created_at: string;
}

export interface UsageLine {
  limit: number;
  in_use: number;
  reserved: number;
  allocated: number;
}

/** a create or import beyond the project's quota: HTTP 413 overLimit with Cinder's message */
export class QuotaExceededError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'QuotaExceededError';
  }
}

export class QuotaStore {
  readonly db: Database<unknown, string>;
  private readonly held: FactsCache<unknown, Reservation>;

  constructor(
    readonly env: RootDatabase,
    private readonly tallies: Tallies,
    /** a backup's project, size (GiB) and status */
    private readonly backup: (id: string) => Counted | undefined,
    /** every backup (to build the tallies of a catalog made before them) */
    backups: () => Iterable<Counted & { id: string }>,
  ) {
    this.db = env.openDB<unknown, string>({ name: 'projects' });
    this.held = new FactsCache(env, 'projects', this.db, (r) => r as Reservation, { start: 'res:', end: 'res;' });
    if (!tallies.built()) env.transactionSync(() => tallies.rebuild(backups(), this.reservations()));
  }

  limits(project: string): Limits {
    return { ...QUOTA_DEFAULTS, ...((this.db.get(`quota:${project}`) as Partial<Limits> | undefined) ?? {}) };
  }

  setLimits(project: string, change: Partial<Limits>): Limits {
    let out!: Limits;
    this.env.transactionSync(() => {
      out = { ...this.limits(project), ...change };
      this.db.putSync(`quota:${project}`, out);
    });
    return out;
  }

  reservations(): Reservation[] {
    return this.held.scan();
  }

  /** `reserving`: a backup already recorded whose reservation is being taken (not counted as in use) */
  usage(project: string, reserving: string | null = null): Record<QuotaKey, UsageLine> {
    const limits = this.limits(project);
    const used = this.tallies.get('used', project);
    const cov = this.tallies.get('cov', project);
    const held = this.tallies.get('held', project);
    let count = used.n - cov.n;
    let gb = used.gb - cov.gb;
    const r = reserving && this.db.get(`resb:${reserving}`) === undefined ? this.backup(reserving) : undefined;
    if (r && r.status !== 'deleted' && r.project_id === project) {
      count--;
      gb -= r.size;
    }
    return {
      backups: { limit: limits.backups, in_use: count, reserved: held.n, allocated: 0 },
      backup_gigabytes: { limit: limits.backup_gigabytes, in_use: gb, reserved: held.gb, allocated: 0 },
    };
  }

  /** Reserves one backup of `gigabytes` GiB for the project, or throws QuotaExceededError (nothing reserved). */
  reserve(project: string, gigabytes: number, backupId: string | null = null): Reservation {
    let out!: Reservation;
    this.env.transactionSync(() => {
      const u = this.usage(project, backupId);
      const b = u.backups;
      if (b.limit >= 0 && b.in_use + b.reserved + 1 > b.limit) throw new QuotaExceededError(`Maximum number of backups allowed (${b.limit}) exceeded`);
      const g = u.backup_gigabytes;
      if (g.limit >= 0 && g.in_use + g.reserved + gigabytes > g.limit) {
        throw new QuotaExceededError(`Requested backup exceeds allowed Backup gigabytes quota. Requested ${gigabytes}G, quota is ${g.limit}G and ${g.in_use + g.reserved}G has been consumed.`);
      }
      out = { id: randomUUID(), project, backups: 1, gigabytes, backup_id: null, owner: ownerHere(), created_at: now() };
      this.db.putSync(`res:${out.id}`, out);
      this.tallies.add('held', project, out.backups, out.gigabytes);
      if (backupId) out = this.name(out, backupId);
    });
    return out;
  }

  /** names the backup a reservation is for (it then no longer counts as in use besides) */
  attach(id: string, backupId: string): void {
    this.env.transactionSync(() => {
      const r = this.db.get(`res:${id}`) as Reservation | undefined;
      if (r && !r.backup_id) this.name(r, backupId);
    });
  }

  /** (inside a write transaction) */
  private name(r: Reservation, backupId: string): Reservation {
    const out = { ...r, backup_id: backupId };
    this.db.putSync(`res:${r.id}`, out);
    this.db.putSync(`resb:${backupId}`, r.id);
    const b = this.backup(backupId);
    if (b && b.status !== 'deleted') this.tallies.add('cov', b.project_id, 1, b.size);
    return out;
  }

  /** ends a reservation (commit or release: what remains of the backup then counts as in use) */
  end(id: string | null | undefined): void {
    if (id) this.env.transactionSync(() => this.drop(id));
  }

  /** (inside a write transaction) */
  private drop(id: string): boolean {
    const r = this.db.get(`res:${id}`) as Reservation | undefined;
    if (!r) return false;
    this.db.removeSync(`res:${id}`);
    this.tallies.add('held', r.project, -r.backups, -r.gigabytes);
    if (r.backup_id && this.db.get(`resb:${r.backup_id}`) === id) {
      this.db.removeSync(`resb:${r.backup_id}`);
      const b = this.backup(r.backup_id);
      if (b && b.status !== 'deleted') this.tallies.add('cov', b.project_id, -1, -b.size);
    }
    return true;
  }

  /** drops reservations whose process has died */
  recover(): number {
    let n = 0;
    this.env.transactionSync(() => {
      for (const r of this.reservations()) if (!ownerAlive(r.owner) && this.drop(r.id)) n++;
    });
    return n;
  }
}
