/**
 * The cluster job queue: the job module's queue (gateway/jobs/queue.ts) with backups shared by
 * the nodes through Kafka. A backup submitted to any node (API or CLI) whose volume every node
 * reaches (RBD, or a file under `kafka.sharedPaths`) is recorded there as usual (`creating`, the
 * quota, the job `queued`), then produced to the jobs topic (key = backup id) with the backup
 * and volume records. Every node consumes the topic as one consumer group, taking a message only
 * while it has a free runner (`workers`), and commits it once the job has ended.
 *
 * Before running, the taker claims the job in the repository (claims.ts): a job whose outcome
 * is recorded, or that a live node holds, is skipped with a log line (a duplicate, a stale job
 * of a backup cancelled or deleted since, a redelivery) — so no job runs twice. A job whose
 * claim belongs to a node that stopped heartbeating (killed mid-job) is ended `error` with a
 * fail_reason naming the lost node (claims.ts says when a node counts as lost); its submitting
 * node does the same for every job it forwarded, at each follow of the repository, so a lost
 * job ends within the node timeout whether or not its message is delivered again. Garbage on
 * the topic is logged and skipped.
 *
 * The node that takes a job made elsewhere copies the volume and backup records into its
 * catalog and runs it with the same handlers (events, progress). The submitting node learns
 * the outcome from the repository — the manifest, or the recorded outcome — on the other
 * node's backup.* event or its next follow (follow.ts), and settles its record, job, quota and
 * volume (settle.ts). Restores and deletes, and backups of volumes only this node reaches, run here.
 */
import type { KafkaConsumer, Message, Producer } from 'node-rdkafka';
import { ownerHere } from '../../catalog/catalog.js';
import { type JobRecord, JobStore } from '../../catalog/jobs.js';
import { type BackupRecord, type VolumeRecord, now } from '../../catalog/records.js';
import type { Appliance } from '../appliance.js';
import { baseConfig, rdkafka } from '../events/kafka-client.js';
import { safeDisconnect } from '../events/kafka.js';
import { backupPayload } from '../jobs/handlers.js';
import { type JobHandlers, type JobSpec, LocalJobQueue } from '../jobs/queue.js';
import type { Claim, JobClaims } from './claims.js';

export interface ClusterJobMessage {
  kind: 'blockgate-job';
  origin: string;
  job: JobRecord;
  backup: BackupRecord;
  volume: VolumeRecord;
  sent_at: string;
}

const MAX_MESSAGE = 256 * 1024;

/** a jobs-topic message, checked; null for anything else */
export function parseJobMessage(value: Buffer | null | undefined): ClusterJobMessage | null {
  if (!value || value.length > MAX_MESSAGE) return null;
  let m: ClusterJobMessage;
  try {
    m = JSON.parse(value.toString()) as ClusterJobMessage;
  } catch {
    return null;
  }
  const uuid = /^[0-9a-f-]{36}$/;
  if (m?.kind !== 'blockgate-job' || typeof m.origin !== 'string' || !m.job || !m.backup || !m.volume) return null;
  if (m.job.kind !== 'backup' || !uuid.test(m.job.id) || !uuid.test(m.backup.id) || m.job.backup_id !== m.backup.id || m.backup.volume_id !== m.volume.id) return null;
  if (m.volume.driver !== 'file' && m.volume.driver !== 'rbd') return null;
  if (typeof m.volume.path !== 'string' || typeof m.volume.name !== 'string') return null;
  return m;
}

export interface ClusterQueueOptions {
  brokers: string;
  topic: string;
  node: string;
  sharedPaths: string[];
  claims: JobClaims;
  log: (level: 'info' | 'warn', fields: Record<string, unknown>, msg: string) => void;
}

export class ClusterJobQueue extends LocalJobQueue {
  private producer?: Producer;
  private consumer?: KafkaConsumer;
  private taken = 0;
  private closed = false;
  private pulling = false;
  /** per partition: offsets taken, and which of them are finished */
  private readonly inPartition = new Map<number, { offsets: number[]; done: Set<number> }>();
  skipped = 0;
  ran = 0;

  constructor(
    readonly app: Appliance,
    store: JobStore,
    handlers: JobHandlers,
    workers: number,
    maxQueued: number,
    onError: (job: JobRecord, e: Error) => void,
    private readonly o: ClusterQueueOptions,
  ) {
    super(store, handlers, workers, maxQueued, onError);
  }

  /** the volume can be read from any node */
  shareable(v: VolumeRecord): boolean {
    if (v.driver === 'rbd') return true;
    return this.o.sharedPaths.some((p) => v.path === p || v.path.startsWith(p.endsWith('/') ? p : `${p}/`));
  }

  async connect(): Promise<void> {
    const Kafka = await rdkafka();
    const p = new Kafka.Producer({ ...baseConfig(this.o.brokers, `blockgate-${this.o.node}-jobs`), dr_cb: true, 'message.timeout.ms': 30_000, 'enable.idempotence': false, 'max.in.flight.requests.per.connection': 1 } as never);
    p.setPollInterval(50);
    // a job the broker never took (down longer than message.timeout.ms): it will not run anywhere, so it ends here, saying why
    p.on('delivery-report', (err, report) => {
      if (!err) return;
      const job = this.store.get(String(report.opaque ?? ''));
      if (!job || job.status !== 'queued') return;
      const reason = `the Kafka jobs topic did not take the job (${err.message}); submit it again when the broker is back`;
      this.o.log('warn', { event: 'job-not-queued', job: job.id, backup: job.backup_id, error: err.message }, reason);
      void Promise.resolve(this.handlers.backup.dropped?.(job, reason)).then(() => this.end(job.id, 'error', reason));
    });
    await new Promise<void>((resolve, reject) => p.connect({ timeout: 10_000 }, (err) => (err ? reject(new Error(`kafka ${this.o.brokers}: ${err.message}`)) : resolve())));
    this.producer = p;
    const c = new Kafka.KafkaConsumer(
      { ...baseConfig(this.o.brokers, `blockgate-${this.o.node}-jobs`), 'group.id': `${this.o.topic}.workers`, 'enable.auto.commit': false, 'session.timeout.ms': 4000, 'heartbeat.interval.ms': 1000, 'allow.auto.create.topics': true, 'max.poll.interval.ms': 3_600_000 } as never,
      { 'auto.offset.reset': 'earliest' },
    );
    c.on('rebalance', (err, assignment) => {
      // a partition taken away: what we run from it is committed by nobody; its claims protect it
      if (err && (err as { code?: number }).code === -174) for (const a of assignment) this.inPartition.delete(a.partition);
    });
    await new Promise<void>((resolve, reject) => c.connect({ timeout: 10_000 }, (err) => (err ? reject(new Error(`kafka ${this.o.brokers}: ${err.message}`)) : resolve())));
    c.subscribe([this.o.topic]);
    // each consume call holds a thread of libuv's pool (shared with file I/O) for up to this long
    c.setDefaultConsumeTimeout(100);
    this.consumer = c;
    this.pullLoop();
  }

  /** a backup of a volume every node reaches is recorded as a cluster job (submit = record, then dispatch) */
  override record(spec: JobSpec): JobRecord {
    const v = spec.kind === 'backup' && spec.volume_id ? this.app.catalog.volumes.get(spec.volume_id) : undefined;
    if (!v || !this.producer || !this.shareable(v)) return super.record(spec);
    return super.record({ ...spec, params: { ...(spec.params ?? {}), cluster: true } });
  }

  /** (its record committed) a cluster job goes to the jobs topic with the backup and volume records, not to this node's queue */
  override dispatch(job: JobRecord): void {
    const b = job.params?.cluster ? this.app.catalog.backups.get(job.backup_id) : undefined;
    const v = b ? this.app.catalog.volumes.get(b.volume_id) : undefined;
    if (!b || !v || !this.producer) return super.dispatch(job);
    super.abandon(job); // no longer waiting to be dispatched
    const msg: ClusterJobMessage = { kind: 'blockgate-job', origin: this.o.node, job, backup: b, volume: v, sent_at: now() };
    this.producer.produce(this.o.topic, null, Buffer.from(JSON.stringify(msg)), b.id, Date.now(), job.id);
  }

  /** a forwarded job left by an earlier run of this node stays forwarded: the cluster runs it */
  override requeue(job: JobRecord): void {
    if (job.params?.cluster) {
      this.store.update(job.id, () => ({ status: 'queued', owner: ownerHere(), resumes: job.resumes + 1 }));
      return;
    }
    super.requeue(job);
  }

  override async cancel(id: string, reason: string, resetTo: string | null = null): Promise<'dequeued' | 'signalled' | 'none'> {
    const j = this.store.get(id);
    if (j?.params?.cluster && j.status === 'queued' && !this.runsHere(id)) {
      // not started anywhere yet (or running elsewhere): recording the outcome makes every node skip it
      const c = await this.o.claims.claim(j.id, 1);
      if (!c.won && 'busy' in c) {
        // running on another node: that node sees the request when it next renews its claim, stops
        // the job (a force-delete: the backup ends deleted there) and records the outcome, which
        // settles the record here (settleForwarded)
        const del = this.app.catalog.backups.get(j.backup_id)?.status === 'deleting';
        await this.o.claims.requestCancel(j.id, reason, del);
        this.store.update(id, () => ({ cancel: { reason, reset_to: resetTo } }));
        this.o.log('info', { event: 'job-cancel-sent', job: j.id, backup: j.backup_id, node: c.busy.node }, `job ${j.id} runs on node ${c.busy.node}: asked it to stop (${reason})`);
        return 'signalled';
      }
      await this.o.claims.finish(j.id, { status: 'cancelled', fail_reason: reason }, c.won ? [c.claim] : []);
      await this.handlers.backup.dropped?.({ ...j, cancel: { reason, reset_to: resetTo } }, reason);
      this.end(id, 'cancelled', reason);
      return 'dequeued';
    }
    return super.cancel(id, reason, resetTo);
  }

  // --------------------------------------------------------------- taking jobs from the topic

  private pullLoop(): void {
    if (this.pulling || this.closed || !this.consumer) return;
    if (this.taken >= this.workers) return;
    this.pulling = true;
    this.consumer.consume(1, (err, msgs) => {
      this.pulling = false;
      if (this.closed) return;
      if (err) {
        setTimeout(() => this.pullLoop(), 500).unref();
        return;
      }
      for (const m of msgs) void this.take(m);
      if (!msgs.length) setTimeout(() => this.pullLoop(), 200).unref();
      else this.pullLoop();
    });
  }

  private track(m: Message): void {
    const p = this.inPartition.get(m.partition) ?? { offsets: [], done: new Set<number>() };
    p.offsets.push(m.offset);
    this.inPartition.set(m.partition, p);
  }

  /** commits the finished prefix of a partition */
  private settle(m: Message): void {
    const p = this.inPartition.get(m.partition);
    if (!p) return;
    p.done.add(m.offset);
    let last = -1;
    while (p.offsets.length && p.done.has(p.offsets[0]!)) {
      last = p.offsets.shift()!;
      p.done.delete(last);
    }
    if (last >= 0) {
      try {
        this.consumer?.commit({ topic: m.topic, partition: m.partition, offset: last + 1 });
      } catch (e) {
        this.o.log('warn', { event: 'job-commit-failed', error: (e as Error).message }, `jobs topic: commit failed: ${(e as Error).message}`);
      }
    }
  }

  private skip(m: Message, why: string, fields: Record<string, unknown> = {}): void {
    this.skipped++;
    this.o.log('info', { event: 'job-skipped', partition: m.partition, offset: m.offset, reason: why, ...fields }, `jobs topic: skipped a message: ${why}`);
  }

  private async take(m: Message): Promise<void> {
    this.track(m);
    this.taken++;
    try {
      const msg = parseJobMessage(m.value);
      if (!msg) return this.skip(m, 'not a blockgate backup job');
      const { job } = msg;
      this.o.log('info', { event: 'job-taken', job: job.id, backup: job.backup_id, partition: m.partition, offset: m.offset, origin: msg.origin }, `jobs topic: took job ${job.id} (backup ${job.backup_id})`);
      const c = await this.o.claims.claim(job.id);
      if (!c.won) {
        if ('done' in c) return this.skip(m, `job ${job.id} already ended (${c.done.status} on ${c.done.node})`, { job: job.id });
        if ('busy' in c) return this.skip(m, `job ${job.id} is held by node ${c.busy.node}`, { job: job.id });
        const lost = [...new Set(c.lost.map((x) => x.node))].join(', ');
        const reason = `node ${lost} was lost while it ran this backup`;
        await this.o.claims.finish(job.id, { status: 'error', fail_reason: `node ${lost} was lost while it ran this backup` }, c.lost);
        this.o.log('warn', { event: 'job-lost-node', job: job.id, backup: job.backup_id, node: lost }, reason);
        this.app.events.emit('backup.create.error', job.backup_id, backupPayload({ ...msg.backup, status: 'error', fail_reason: `node ${lost} was lost while it ran this backup` }));
        return;
      }
      if (await this.app.repo.store.has(`manifests/${job.backup_id}.json`)) {
        await this.o.claims.finish(job.id, { status: 'done', fail_reason: null }, [c.claim]);
        return this.skip(m, `backup ${job.backup_id} is committed already`, { job: job.id });
      }
      const stopWatch = this.watchClaim(job, c.claim);
      let out: JobRecord;
      try {
        out = await this.runHere(msg);
      } finally {
        stopWatch();
      }
      this.ran++;
      const b = this.app.catalog.backups.get(job.backup_id);
      // ended meanwhile by another node (it judged this one lost): that outcome stands
      if (await this.o.claims.outcome(job.id)) await this.o.claims.release(job.id, c.claim);
      else await this.o.claims.finish(job.id, { status: out.status === 'done' ? 'done' : out.status === 'cancelled' ? 'cancelled' : 'error', fail_reason: b?.fail_reason ?? out.error ?? null, ...(b ? { backup_status: b.status } : {}) }, [c.claim]);
    } catch (e) {
      this.o.log('warn', { event: 'job-take-failed', partition: m.partition, offset: m.offset, error: (e as Error).message }, `jobs topic: ${(e as Error).message}`);
    } finally {
      this.taken--;
      this.settle(m);
      this.pullLoop();
    }
  }

  /**
   * While a job runs here, its claim is renewed (every renewMs), and the repository is asked
   * whether the job was cancelled from another node (a force-delete there: this node stops it
   * and the backup ends deleted) or ended by one (it judged this node lost: this node stops it).
   */
  private watchClaim(job: JobRecord, claim: Claim): () => void {
    let busy = false;
    let stopped = false;
    const tick = async () => {
      if (busy || stopped) return;
      busy = true;
      try {
        await this.o.claims.renew(job.id, claim);
        const [done, cancel] = await Promise.all([this.o.claims.outcome(job.id), this.o.claims.cancelRequest(job.id)]);
        if (stopped || (!done && !cancel) || !this.runsHere(job.id)) return;
        stopped = true;
        if (cancel?.delete && !done) {
          // as a force-delete here would: the job sees `deleting`, stops, and the backup ends
          // deleted. Only while it is still creating: one that has just committed stays as it is
          // (never `deleting` with no job to finish it); the node that asked removes its manifest,
          // and this node's follower then marks it deleted.
          try {
            this.app.catalog.transition(job.backup_id, ['creating'], 'deleting', { fail_reason: `cancel requested by os-force_delete on node ${cancel.node}` });
          } catch {
            /* not creating any more: the job ends as it is */
          }
        }
        const reason = done ? `node ${done.node} ended this job (${done.status}): ${done.fail_reason ?? ''}` : cancel!.reason;
        this.o.log('warn', { event: done ? 'job-ended-elsewhere' : 'job-cancel-requested', job: job.id, backup: job.backup_id, node: done?.node ?? cancel!.node }, `job ${job.id}: ${reason}`);
        await super.cancel(job.id, reason);
      } catch {
        /* the repository is away: the next tick tries again */
      } finally {
        busy = false;
      }
    };
    const t = setInterval(() => void tick(), this.o.claims.renewMs);
    t.unref();
    return () => {
      stopped = true;
      clearInterval(t);
    };
  }

  /** runs a cluster job on this node: its own (still recorded here), or one made elsewhere (copied in) */
  private async runHere(msg: ClusterJobMessage): Promise<JobRecord> {
    const { catalog } = this.app;
    const { job, backup, volume } = msg;
    if (msg.origin !== this.o.node || !this.store.get(job.id)) {
      await catalog.env.transaction(() => {
        if (!catalog.volumes.get(volume.id)) {
          const name = catalog.volumeNames.get(volume.name) !== undefined ? `${volume.name}-${volume.id.slice(0, 8)}` : volume.name;
          catalog.volumes.put(volume.id, { ...volume, name, status: 'available', previous_status: null } as VolumeRecord);
          catalog.volumeNames.put(name, volume.id);
        }
        catalog.backups.put(backup.id, { ...backup, status: 'creating', owner: ownerHere(), updated_at: now(), notes: [...backup.notes, `run on node ${this.o.node} for node ${msg.origin}`] });
      });
      catalog.registerWriter(backup.id);
      this.store.put({ ...job, status: 'queued', owner: ownerHere(), reservation: null, params: { ...job.params, cluster: true, origin: msg.origin } });
    }
    const parent = backup.parent_id;
    if (parent && !catalog.maps.get(parent)) await this.onNeedParent?.();
    super.requeue(this.store.get(job.id)!);
    return this.wait(job.id);
  }

  /** set by the node: bring the catalog up to the repository (an incremental's parent) */
  onNeedParent?: () => Promise<void>;

  /** ends a job record of this node (and wakes its waiters) */
  end(id: string, status: 'done' | 'error' | 'cancelled', error: string | null): void {
    this.finish(id, status, error);
  }

  override stats(): { running: number; queued: number } {
    const s = super.stats();
    return { running: s.running, queued: s.queued + this.store.active().filter((j) => j.params?.cluster && j.status === 'queued').length };
  }

  override async stop(): Promise<void> {
    this.closed = true;
    await super.stop();
    const c = this.consumer;
    const p = this.producer;
    this.consumer = undefined;
    this.producer = undefined;
    if (c) await safeDisconnect(c);
    if (p) await safeDisconnect(p, 2000);
  }
}
