/**
 * Job records in the catalog (LMDB database `jobs`): what the daemon was asked to do (back up,
 * restore, delete), who asked, where it stands (queued, running, done, error, cancelled) and its
 * progress. Records outlive the process that ran them, so a restarted daemon finds every job it
 * had and settles or resumes it (gateway/jobs/recover.ts). Finished records are kept up to a
 * bound (the newest KEEP_FINISHED), older ones are dropped.
 */
import type { Database, RootDatabase } from 'lmdb';
import { commitBatched } from './commit.js';
import { now, type Owner } from './records.js';

export const JOB_KINDS = ['backup', 'restore', 'delete'] as const;
export type JobKind = (typeof JOB_KINDS)[number];
export const JOB_STATES = ['queued', 'running', 'done', 'error', 'cancelled'] as const;
export type JobStatus = (typeof JOB_STATES)[number];
export const ACTIVE_JOB_STATES: JobStatus[] = ['queued', 'running'];

export interface JobRecord {
  id: string;
  kind: JobKind;
  status: JobStatus;
  /** the backup the job acts on (backup: the one it creates; restore: its source; delete: the one deleted) */
  backup_id: string;
  /** backup: the volume read; restore: the target volume */
  volume_id: string | null;
  project_id: string;
  user_id: string;
  /** kind-specific parameters (restore: the RBD/new-volume choices; delete: force) */
  params: Record<string, unknown>;
  /** a quota reservation taken when the job was submitted (released when it ends) */
  reservation: string | null;
  progress: { percent: number | null; bytes: number; total: number | null };
  /** the process that accepted the job (the daemon); a dead owner's active jobs are recovered */
  owner: Owner | null;
  /** set when a cancel was asked for: why, and the backup status to apply when the job stops (reset-state) */
  cancel: { reason: string; reset_to?: string | null } | null;
  error: string | null;
  /** times this job was resumed after a restart */
  resumes: number;
  created_at: string;
  started_at: string | null;
  ended_at: string | null;
  updated_at: string;
}

export const JOBS_DB = 'jobs';
export const KEEP_FINISHED = 1000;

export class JobStore {
  readonly db: Database<JobRecord, string>;

  constructor(readonly env: RootDatabase) {
    this.db = env.openDB<JobRecord, string>({ name: JOBS_DB });
  }

  get(id: string): JobRecord | undefined {
    return this.db.get(id);
  }

  list(filter: (j: JobRecord) => boolean = () => true): JobRecord[] {
    const out: JobRecord[] = [];
    for (const { value } of this.db.getRange({})) if (filter(value)) out.push(value);
    return out.sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id));
  }

  active(): JobRecord[] {
    return this.list((j) => ACTIVE_JOB_STATES.includes(j.status));
  }

  /** the active job on a backup, if any */
  activeFor(backupId: string): JobRecord | undefined {
    return this.list((j) => j.backup_id === backupId && ACTIVE_JOB_STATES.includes(j.status)).at(-1);
  }

  put(j: JobRecord): void {
    this.db.putSync(j.id, j);
  }

  update(id: string, change: (j: JobRecord) => Partial<JobRecord>): JobRecord | undefined {
    return this.env.transactionSync(() => this.change(id, change));
  }

  /** update, in the next batched commit (catalog/commit.ts); resolves once that is committed */
  updateBatched(id: string, change: (j: JobRecord) => Partial<JobRecord>): Promise<JobRecord | undefined> {
    return commitBatched(this.env, () => this.change(id, change));
  }

  /** (inside a write transaction) the record as changed, read and written there so no other change is lost */
  private change(id: string, change: (j: JobRecord) => Partial<JobRecord>): JobRecord | undefined {
    const j = this.db.get(id);
    if (!j) return undefined;
    const out = { ...j, ...change(j), updated_at: now() };
    this.db.putSync(id, out);
    return out;
  }

  /** progress is written often: in batched commits, never waited for; a job that has ended keeps its record */
  putProgress(id: string, progress: JobRecord['progress']): void {
    void commitBatched(this.env, () => {
      const j = this.db.get(id);
      if (j && ACTIVE_JOB_STATES.includes(j.status)) this.db.putSync(id, { ...j, progress, updated_at: now() });
    }).catch(() => undefined);
  }

  /** drops the oldest finished records beyond KEEP_FINISHED */
  prune(keep = KEEP_FINISHED): void {
    const done = this.list((j) => !ACTIVE_JOB_STATES.includes(j.status));
    if (done.length <= keep) return;
    this.env.transactionSync(() => {
      for (const j of done.slice(0, done.length - keep)) this.db.removeSync(j.id);
    });
  }
}
