/**
 * The job queue: how the daemon runs backups, restores and deletes (Cinder's backup manager
 * with `backup_max_operations`). This is the interface a Kafka-backed queue (several nodes,
 * one consumer group on a jobs topic) replaces the local one behind:
 *
 *   interface JobQueue {
 *     submit(spec)            persists a `queued` JobRecord (catalog/jobs.ts) and returns it at
 *                             once; throws QueueFullError past `maxQueued` waiting jobs
 *     record(spec)            submit's first half, inside the caller's transaction (the backup
 *                             create's batched commit); dispatch(job) once that is committed,
 *                             abandon(job) when it is not
 *     cancel(id, reason, to?) queued: dropped from the queue, the record `cancelled`, and the
 *                             handler's `dropped` settles the resource; running: the job's
 *                             AbortSignal fires (the runner stops at its next progress step);
 *                             `to` is the backup status to apply when it has stopped (reset-state)
 *     wait(id)                resolves with the record once the job has ended
 *     start() / stop()        dispatching on / off; stop aborts running jobs and leaves queued
 *                             ones `queued` in LMDB, where the next start finds them
 *   }
 *
 * Dispatch: at most `workers` jobs run at once in this process, FIFO. A job is a JobRecord plus a
 * JobHandler for its kind (gateway/jobs/handlers.ts): `run(ctx)` does the work through the
 * engine and reports progress with `ctx.progress(bytes, total)`, which also throws JobAborted
 * once ctx.signal fired (the engine calls progress often, so that is how a job is cancelled
 * without the engine knowing jobs). The queue itself only moves records
 * queued → running → done | error | cancelled and keeps progress on them (written at most every
 * PROGRESS_MS); events and resource states are the handlers' business. A running job's record
 * changes in batched commits (catalog/commit.ts), never a synchronous commit on the event loop
 * the API answers from.
 *
 * Records are in LMDB, so a restarted daemon recovers every job a dead process left
 * (gateway/jobs/recover.ts): nothing stays queued or running for a process that is gone.
 *
 * A Kafka queue keeps the same contract: `submit` produces the spec to the jobs topic (key: the
 * backup id) after persisting the record; each node's consumer takes a job only while it has a
 * free runner (pause/resume the consumer), runs it with the same handlers, and commits the
 * offset when the job has ended; `cancel` of a job running elsewhere is an event the owning node
 * acts on.
 */
import { randomUUID } from 'node:crypto';
import { ownerHere } from '../../catalog/catalog.js';
import { ACTIVE_JOB_STATES, type JobKind, type JobRecord, type JobStatus, JobStore } from '../../catalog/jobs.js';
import { now } from '../../catalog/records.js';

export interface JobSpec {
  kind: JobKind;
  backup_id: string;
  volume_id: string | null;
  project_id: string;
  user_id: string;
  params?: Record<string, unknown>;
  reservation?: string | null;
}

export interface JobContext {
  readonly job: JobRecord;
  readonly signal: AbortSignal;
  /** records progress (bytes done, of total when known); throws JobAborted once the job is cancelled */
  progress(bytes: number, total?: number | null): void;
}

export interface JobHandler {
  run(ctx: JobContext): Promise<void>;
  /** a queued job that will never run (cancelled, or its daemon died before it started): settle its resource */
  dropped?(job: JobRecord, reason: string): void | Promise<void>;
}

export type JobHandlers = Record<JobKind, JobHandler>;

export interface JobQueue {
  readonly workers: number;
  readonly maxQueued: number;
  submit(spec: JobSpec): JobRecord;
  record(spec: JobSpec): JobRecord;
  dispatch(job: JobRecord): void;
  abandon(job: JobRecord): void;
  cancel(id: string, reason: string, resetTo?: string | null): Promise<'dequeued' | 'signalled' | 'none'>;
  wait(id: string): Promise<JobRecord>;
  get(id: string): JobRecord | undefined;
  stats(): { running: number; queued: number };
  start(): void;
  stop(): Promise<void>;
}

/** the queue is full: Cinder's overLimit (413), with a hint to retry */
export class QueueFullError extends Error {
  constructor(max: number) {
    super(`too many backup operations are waiting (${max} queued); retry when some have finished`);
    this.name = 'QueueFullError';
  }
}

/** thrown by ctx.progress once the job's signal fired */
export class JobAborted extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = 'JobAborted';
  }
}

export const PROGRESS_MS = 500;

export class LocalJobQueue implements JobQueue {
  readonly store: JobStore;
  private readonly pending: string[] = [];
  private readonly running = new Map<string, { abort: AbortController; done: Promise<void> }>();
  private readonly waiters = new Map<string, ((j: JobRecord) => void)[]>();
  /** recorded, not yet dispatched (their transaction is being committed): they count against maxQueued */
  private accepting = 0;
  private finishedSincePrune = 0;
  private started = false;
  private stopping = false;

  constructor(
    store: JobStore,
    protected readonly handlers: JobHandlers,
    readonly workers = 2,
    readonly maxQueued = 64,
    private readonly onError: (job: JobRecord, e: Error) => void = () => {},
  ) {
    this.store = store;
    if (!Number.isInteger(workers) || workers < 1) throw new RangeError('workers must be a whole number of at least 1');
  }

  /** the job runs in this process now */
  runsHere(id: string): boolean {
    return this.running.has(id);
  }

  get(id: string): JobRecord | undefined {
    return this.store.get(id);
  }

  stats(): { running: number; queued: number } {
    return { running: this.running.size, queued: this.pending.length };
  }

  /** jobs left queued by an earlier run (recovery) go back on the queue, in their order */
  requeue(job: JobRecord): void {
    this.store.update(job.id, () => ({ status: 'queued', owner: ownerHere(), resumes: job.resumes + 1, started_at: null }));
    this.pending.push(job.id);
    this.pump();
  }

  submit(spec: JobSpec): JobRecord {
    const job = this.record(spec);
    this.dispatch(job);
    return job;
  }

  /**
   * The first half of submit: checks the queue has room and writes the `queued` record, in the
   * caller's transaction when there is one; the caller dispatches it once that is committed
   * (or abandons it when the transaction is not).
   */
  record(spec: JobSpec): JobRecord {
    if (this.stopping) throw new Error('the daemon is stopping; no new jobs are accepted');
    if (this.pending.length + this.accepting >= this.maxQueued) throw new QueueFullError(this.maxQueued);
    const t = now();
    const job: JobRecord = {
      id: randomUUID(),
      kind: spec.kind,
      status: 'queued',
      backup_id: spec.backup_id,
      volume_id: spec.volume_id,
      project_id: spec.project_id,
      user_id: spec.user_id,
      params: spec.params ?? {},
      reservation: spec.reservation ?? null,
      progress: { percent: null, bytes: 0, total: null },
      owner: ownerHere(),
      cancel: null,
      error: null,
      resumes: 0,
      created_at: t,
      started_at: null,
      ended_at: null,
      updated_at: t,
    };
    this.store.put(job);
    this.accepting++;
    return job;
  }

  /** the second half of submit: a recorded job (its record committed) goes on the queue */
  dispatch(job: JobRecord): void {
    this.accepting--;
    this.pending.push(job.id);
    // dispatched after the caller's answer (and its transaction) is done
    setImmediate(() => this.pump());
  }

  /** a recorded job whose transaction was not committed: it never existed */
  abandon(_job: JobRecord): void {
    this.accepting--;
  }

  async cancel(id: string, reason: string, resetTo: string | null = null): Promise<'dequeued' | 'signalled' | 'none'> {
    const at = this.pending.indexOf(id);
    if (at >= 0) {
      this.pending.splice(at, 1);
      const job = this.store.update(id, () => ({ cancel: { reason, reset_to: resetTo } }))!;
      await this.handlers[job.kind].dropped?.(job, reason);
      this.finish(id, 'cancelled', reason);
      return 'dequeued';
    }
    const r = this.running.get(id);
    if (!r) return 'none';
    this.store.update(id, () => ({ cancel: { reason, reset_to: resetTo } }));
    r.abort.abort(new JobAborted(reason));
    return 'signalled';
  }

  wait(id: string): Promise<JobRecord> {
    const j = this.store.get(id);
    if (!j) return Promise.reject(new Error(`no job ${id}`));
    if (!ACTIVE_JOB_STATES.includes(j.status)) return Promise.resolve(j);
    return new Promise((resolve) => {
      const list = this.waiters.get(id) ?? [];
      list.push(resolve);
      this.waiters.set(id, list);
    });
  }

  start(): void {
    this.started = true;
    this.pump();
  }

  /** aborts running jobs and waits for them; queued ones stay queued in LMDB for the next start */
  async stop(): Promise<void> {
    this.stopping = true;
    this.started = false;
    for (const [id, r] of this.running) {
      this.store.update(id, () => ({ cancel: { reason: 'the daemon stopped while it ran' } }));
      r.abort.abort(new JobAborted('the daemon stopped while it ran'));
    }
    await Promise.all([...this.running.values()].map((r) => r.done));
  }

  private pump(): void {
    while (this.started && this.running.size < this.workers && this.pending.length) {
      const id = this.pending.shift()!;
      const job = this.store.get(id);
      if (!job || job.status !== 'queued') continue;
      this.launch(job);
    }
  }

  private launch(queued: JobRecord): void {
    const abort = new AbortController();
    const started = { status: 'running' as const, started_at: now(), owner: ownerHere() };
    const job: JobRecord = { ...queued, ...started };
    let last = 0;
    const ctx: JobContext = {
      job,
      signal: abort.signal,
      progress: (bytes, total = null) => {
        if (abort.signal.aborted) throw abort.signal.reason instanceof JobAborted ? abort.signal.reason : new JobAborted('cancelled');
        const t = Date.now();
        if (t - last < PROGRESS_MS && !(total && bytes >= total)) return;
        last = t;
        const percent = total ? Math.min(100, Math.floor((bytes / total) * 100)) : null;
        this.store.putProgress(job.id, { percent, bytes, total });
      },
    };
    // a running job's record changes in batched commits (off the event loop, with the API's
    // writes): `running` before its work starts, its end before its waiters hear of it
    const done = (async () => {
      try {
        await this.store.updateBatched(job.id, () => started);
        await this.handlers[job.kind].run(ctx);
        await this.finishBatched(job.id, abort.signal.aborted ? 'cancelled' : 'done', null);
      } catch (e) {
        const err = e as Error;
        const cancelled = abort.signal.aborted || err instanceof JobAborted;
        await this.finishBatched(job.id, cancelled ? 'cancelled' : 'error', err.message);
        if (!cancelled) this.onError(job, err);
      } finally {
        this.running.delete(job.id);
        this.pump();
      }
    })();
    this.running.set(job.id, { abort, done });
  }

  /** ends a job record (and wakes its waiters); a queue built on this one ends what it ran elsewhere with it */
  protected finish(id: string, status: JobStatus, error: string | null): void {
    this.ended(id, this.store.update(id, ending(status, error)));
  }

  private async finishBatched(id: string, status: JobStatus, error: string | null): Promise<void> {
    this.ended(id, await this.store.updateBatched(id, ending(status, error)));
  }

  private ended(id: string, j: JobRecord | undefined): void {
    // finished records are bounded (KEEP_FINISHED); counting them reads every job record, so not at every end
    if (++this.finishedSincePrune >= PRUNE_EVERY) {
      this.finishedSincePrune = 0;
      this.store.prune();
    }
    const list = this.waiters.get(id);
    this.waiters.delete(id);
    if (j) for (const w of list ?? []) w(j);
  }
}

/** jobs that end between two prunes of the finished records */
const PRUNE_EVERY = 32;

function ending(status: JobStatus, error: string | null): (cur: JobRecord) => Partial<JobRecord> {
  return (cur) => ({ status, error, ended_at: now(), progress: status === 'done' ? { ...cur.progress, percent: 100 } : cur.progress });
}
