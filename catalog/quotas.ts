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
import { ownerAlive, ownerHere } from './catalog.js';
import { type Owner, now } from './records.js';
import { FactsCache } from './facts.js';

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
    /** the project, size (GiB) and status of every backup */
    private readonly backups: () => Iterable<{ id: string; project_id: string; status: string; size: number }>,
  ) {
    this.db = env.openDB<unknown, string>({ name: 'projects' });
    this.held = new FactsCache(env, 'projects', this.db, (r) => r as Reservation, { start: 'res:', end: 'res;' });
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
    const res = this.reservations().filter((r) => r.project === project);
    const covered = new Set([...res.map((r) => r.backup_id), reserving].filter(Boolean));
    let count = 0;
    let gb = 0;
    for (const b of this.backups()) {
      if (b.project_id !== project || b.status === 'deleted' || covered.has(b.id)) continue;
      count++;
      gb += b.size;
    }
    const reserved = { backups: res.reduce((s, r) => s + r.backups, 0), gigabytes: res.reduce((s, r) => s + r.gigabytes, 0) };
    return {
      backups: { limit: limits.backups, in_use: count, reserved: reserved.backups, allocated: 0 },
      backup_gigabytes: { limit: limits.backup_gigabytes, in_use: gb, reserved: reserved.gigabytes, allocated: 0 },
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
      out = { id: randomUUID(), project, backups: 1, gigabytes, backup_id: backupId, owner: ownerHere(), created_at: now() };
      this.db.putSync(`res:${out.id}`, out);
    });
    return out;
  }

  /** names the backup a reservation is for (it then no longer counts as in use besides) */
  attach(id: string, backupId: string): void {
    this.env.transactionSync(() => {
      const r = this.db.get(`res:${id}`) as Reservation | undefined;
      if (r) this.db.putSync(`res:${id}`, { ...r, backup_id: backupId });
    });
  }

  /** ends a reservation (commit or release: what remains of the backup then counts as in use) */
  end(id: string | null | undefined): void {
    if (id) this.db.removeSync(`res:${id}`);
  }

  /** drops reservations whose process has died */
  recover(): number {
    let n = 0;
    this.env.transactionSync(() => {
      for (const r of this.reservations()) {
        if (!ownerAlive(r.owner)) {
          this.db.removeSync(`res:${r.id}`);
          n++;
        }
      }
    });
    return n;
  }
}
