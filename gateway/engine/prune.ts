/**
 * Retention: which backups of a volume a policy keeps, with restic's and Proxmox Backup
 * Server's semantics, and the prune that deletes the others.
 *
 * - keep-last N: the N newest backups;
 * - keep-hourly/daily/weekly/monthly/yearly N: calendar buckets in UTC (hour, day, ISO
 *   week from Monday, month, year); the newest backup in each bucket is kept, for the N
 *   most recent buckets that hold a backup (empty hours, days... do not count). N may be
 *   -1 ("unlimited"): every bucket.
 *
 * The rules are ORed: a backup is kept if any rule keeps it, and lists every rule that does.
 * Everything else is removed. A policy with no rule at all is refused, never read as
 * "remove everything" (restic refuses an empty policy too).
 *
 * The buckets are filled from the volume's complete backups (available, or restoring,
 * which is an available backup being read). Some backups are kept whatever the rules say:
 * protected ones, ones attached over NBD or open on a mount (reader leases), restoring ones,
 * and ones not yet complete (creating) — a backup that is not available is never a
 * candidate. Deletion goes through deleteBackup, which checks protection and leases again in
 * the transaction that starts the delete, so a backup attached after the plan was made is
 * still not removed.
 */
import type { BackupRecord, BackupStatus } from '../../catalog/records.js';
import type { Appliance } from '../appliance.js';
import { deleteBackup } from './delete.js';

export const BUCKET_RULES = ['hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;
export type BucketRule = (typeof BUCKET_RULES)[number];

/** counts per rule; 0 or absent: rule off; -1: unlimited */
export interface PrunePolicy {
  last?: number;
  hourly?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
}

export interface PruneCandidate {
  id: string;
  name?: string;
  created_at: string;
  status: BackupStatus;
  protected?: boolean;
  /** reader leases held on it (NBD exports, mounts, a running verify) */
  attached?: string[];
}

export interface PruneDecision {
  id: string;
  name?: string;
  created_at: string;
  action: 'keep' | 'remove';
  /** why it is kept: rules ("last", "daily", ...) and guards ("protected", "attached", "restoring", "creating") */
  reasons: string[];
}

export interface PrunePlan {
  /** newest first */
  decisions: PruneDecision[];
  keep: PruneDecision[];
  remove: PruneDecision[];
}

export class EmptyPolicyError extends Error {
  constructor() {
    super('a prune needs at least one --keep-* option (with none, it would remove every backup)');
    this.name = 'EmptyPolicyError';
  }
}

export function isEmptyPolicy(p: PrunePolicy): boolean {
  return !(['last', ...BUCKET_RULES] as const).some((k) => (p[k] ?? 0) !== 0);
}

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/** ISO 8601 week of a UTC date: "YYYY-Www" (weeks from Monday; week 1 holds the year's first Thursday) */
export function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const dow = t.getUTCDay() || 7; // Monday 1 .. Sunday 7
  t.setUTCDate(t.getUTCDate() + 4 - dow); // the Thursday of this week decides its year
  const year = t.getUTCFullYear();
  const week = Math.ceil(((t.getTime() - Date.UTC(year, 0, 1)) / 86_400_000 + 1) / 7);
  return `${year}-W${pad(week)}`;
}

export function bucketOf(rule: BucketRule, d: Date): string {
  const y = pad(d.getUTCFullYear(), 4);
  const m = pad(d.getUTCMonth() + 1);
  const day = pad(d.getUTCDate());
  switch (rule) {
    case 'hourly':
      return `${y}-${m}-${day}T${pad(d.getUTCHours())}`;
    case 'daily':
      return `${y}-${m}-${day}`;
    case 'weekly':
      return isoWeek(d);
    case 'monthly':
      return `${y}-${m}`;
    case 'yearly':
      return y;
  }
}

/** states that count in the buckets (complete backups) */
const COUNTED: BackupStatus[] = ['available', 'restoring'];
/** states prune leaves alone and does not list */
const IGNORED: BackupStatus[] = ['deleted'];

/**
 * The plan for one volume's backups: pure, the same input gives the same plan.
 * @param now the time of the prune: a backup dated after it (a clock that jumped) is kept
 *   with reason "future" and counts in no bucket, as restic ignores future snapshots
 */
export function planPrune(backups: PruneCandidate[], policy: PrunePolicy, now: Date = new Date()): PrunePlan {
  if (isEmptyPolicy(policy)) throw new EmptyPolicyError();
  for (const [k, v] of Object.entries(policy)) {
    if (v !== undefined && (!Number.isInteger(v) || v < -1)) throw new RangeError(`keep-${k} must be a whole number (or -1, unlimited), not ${v}`);
  }
  const list = backups
    .filter((b) => !IGNORED.includes(b.status))
    .sort((a, b) => b.created_at.localeCompare(a.created_at) || b.id.localeCompare(a.id));
  const left: Record<string, number> = { last: policy.last ?? 0 };
  const lastBucket: Record<string, string | undefined> = {};
  for (const r of BUCKET_RULES) left[r] = policy[r] ?? 0;

  const decisions = list.map((b): PruneDecision => {
    const reasons: string[] = [];
    const at = new Date(b.created_at);
    const future = at.getTime() > now.getTime();
    if (COUNTED.includes(b.status) && !future) {
      if (left.last !== 0) {
        reasons.push('last');
        if (left.last! > 0) left.last!--;
      }
      for (const rule of BUCKET_RULES) {
        if (left[rule] === 0) continue;
        const key = bucketOf(rule, at);
        if (key === lastBucket[rule]) continue; // an older backup in a bucket already represented
        lastBucket[rule] = key;
        reasons.push(rule);
        if (left[rule]! > 0) left[rule]!--;
      }
    }
    if (future) reasons.push('future');
    if (b.protected) reasons.push('protected');
    if (b.attached?.length) reasons.push('attached');
    if (b.status !== 'available') reasons.push(b.status);
    return { id: b.id, name: b.name, created_at: b.created_at, action: reasons.length ? 'keep' : 'remove', reasons };
  });
  return { decisions, keep: decisions.filter((d) => d.action === 'keep'), remove: decisions.filter((d) => d.action === 'remove') };
}

export interface PruneReport {
  volume: string;
  dry_run: boolean;
  policy: PrunePolicy;
  kept: number;
  removed: number;
  /** one row per backup, newest first; `done` false for a removal that was refused or not run */
  backups: (PruneDecision & { done: boolean; error?: string })[];
}

export async function pruneVolume(app: Appliance, volume: string, policy: PrunePolicy, opts: { dryRun?: boolean; now?: Date } = {}): Promise<PruneReport> {
  const { catalog } = app;
  const v = catalog.volume(volume);
  const candidates = catalog.listBackups(v.id).map((b: BackupRecord): PruneCandidate => ({
    id: b.id,
    name: b.name,
    created_at: b.created_at,
    status: b.status,
    protected: b.protected,
    attached: catalog.readerLeases(b.id),
  }));
  const plan = planPrune(candidates, policy, opts.now ?? new Date());
  const rows: PruneReport['backups'] = plan.decisions.map((d) => ({ ...d, done: false }));
  let removed = 0;
  if (!opts.dryRun) {
    for (const row of rows) {
      if (row.action !== 'remove') continue;
      try {
        await deleteBackup(app, row.id);
        row.done = true;
        removed++;
      } catch (e) {
        // attached, protected or changed since the plan: it stays, and the report says why
        row.action = 'keep';
        row.reasons = [`delete refused: ${(e as Error).message}`];
        row.error = (e as Error).message;
      }
    }
  }
  if (!opts.dryRun) app.events.emit('prune.end', v.id, { volume_id: v.id, volume_name: v.name, removed, kept: rows.filter((r) => r.action === 'keep').length });
  return {
    volume: v.name,
    dry_run: !!opts.dryRun,
    policy,
    kept: rows.filter((r) => r.action === 'keep').length,
    removed,
    backups: rows,
  };
}
