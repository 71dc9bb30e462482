/**
 * A daemon as a node of a cluster: its name (config `node`, `serve --node`, default the host
 * name), its heartbeats and service list, and — with Kafka configured — its catalog following
 * the shared repository and the other nodes' events. With no `kafka` in the config nothing
 * here talks to anyone: the node is alone, as a single appliance always was.
 */
import type { Appliance } from '../appliance.js';
import type { Daemon } from '../daemon.js';
import type { JobRecord } from '../../catalog/jobs.js';
import { makeHandlers } from '../jobs/handlers.js';
import type { JobService } from '../jobs/service.js';
import { JobClaims } from './claims.js';
import { ClusterJobQueue, settleForwarded } from './jobs.js';
import type { ServiceRecord } from '../api/heartbeat.js';
import { now } from '../../catalog/records.js';
import { CatalogFollower } from './follow.js';
import { Heartbeats } from './heartbeat.js';

export type NodeLog = (level: 'info' | 'warn', fields: Record<string, unknown>, msg: string) => void;

export interface ClusterNode {
  name: string;
  heartbeats: Heartbeats;
  follower?: CatalogFollower;
  stop(): Promise<void>;
}

export async function startNode(app: Appliance, rawLog: NodeLog, load?: () => { workers: number; running: number }): Promise<ClusterNode> {
  // a broker outage makes every client report it: one warning per kind every 10 s
  const last = new Map<string, number>();
  const log: NodeLog = (level, fields, msg) => {
    const kind = String(fields.event ?? '');
    if (level === 'warn' && /-error$/.test(kind)) {
      if (Date.now() - (last.get(kind) ?? 0) < 10_000) return;
      last.set(kind, Date.now());
    }
    rawLog(level, fields, msg);
  };
  const k = app.config.kafka;
  const name = app.events.node;
  const services = app.catalog.env.openDB<ServiceRecord, string>({ name: 'services' });
  const heartbeats = new Heartbeats({
    node: name,
    dataDir: app.config.dataDir,
    bus: app.events,
    log,
    load,
    // os-services (gateway/api/heartbeat.ts) lists every node: each peer's heartbeat is a service record here
    onPeer: (hb) => services.putSync(`cinder-backup@${hb.node}`, { binary: 'cinder-backup', host: hb.node, zone: 'nova', pid: hb.pid, started_at: hb.started_at, updated_at: now(), disabled: services.get(`cinder-backup@${hb.node}`)?.disabled ?? false, disabled_reason: null }),
    ...(k ? { kafka: { brokers: k.brokers, topic: k.nodesTopic, heartbeatMs: k.heartbeatMs, nodeTimeoutMs: k.nodeTimeoutMs } } : {}),
  });
  await heartbeats.start();
  const follower = k ? new CatalogFollower(app, log) : undefined;
  await follower?.start();
  log('info', { event: 'node-started', node: name, kafka: k ? k.brokers : null }, k ? `node ${name} joined the cluster on ${k.brokers}` : `node ${name} (alone: no kafka configured)`);
  return {
    name,
    heartbeats,
    follower,
    stop: async () => {
      await follower?.stop();
      await heartbeats.stop();
    },
  };
}

const nodeOf = new WeakMap<Daemon, ClusterNode>();

/** the daemon as a node: started before it listens, stopped with it */
export async function installNode(d: Daemon): Promise<ClusterNode> {
  const node = await startNode(d.app, (level, fields, msg) => d.log[level](fields, msg), () => ({ workers: 0, running: 0 }));
  nodeOf.set(d, node);
  d.onStop(() => node.stop());
  return node;
}

/**
 * With Kafka configured, the job module's queue becomes the cluster's (jobs.ts): called by the
 * service between creating the JobService and starting it. Without Kafka it changes nothing.
 */
export async function installClusterJobs(d: Daemon, jobs: JobService, onError: (job: JobRecord, e: Error) => void): Promise<void> {
  const k = d.app.config.kafka;
  const node = nodeOf.get(d);
  if (!k || !node) return;
  const log: NodeLog = (level, fields, msg) => d.log[level](fields, msg);
  const claims = new JobClaims(d.app.repo.store, node.name, k.nodeTimeoutMs, node.heartbeats.instance, (n, i) => node.heartbeats.alive(n, i));
  const q = new ClusterJobQueue(d.app, jobs.store, makeHandlers(d.app, jobs.quotas, jobs.store), jobs.queue.workers, jobs.queue.maxQueued, onError, { brokers: k.brokers, topic: k.jobsTopic, node: node.name, sharedPaths: k.sharedPaths, claims, log });
  await q.connect();
  q.onNeedParent = () => node.follower?.sync() ?? Promise.resolve();
  jobs.useQueue(q);
  node.heartbeats.load = () => ({ workers: q.workers, running: q.stats().running });
  // forwarded jobs settle after each follow, and every second on their own (a long follow, adopting
  // many backups, never holds back the end of a job whose node was lost); one pass at a time
  let settling: Promise<unknown> | undefined;
  const settle = () =>
    (settling ??= settleForwarded(d.app, jobs, q, claims, log)
      .catch((e: Error) => log('warn', { event: 'settle-failed', error: e.message }, `settling forwarded jobs: ${e.message}`))
      .finally(() => (settling = undefined)));
  if (node.follower) node.follower.afterSync = settle;
  const timer = setInterval(() => void settle(), 1000);
  timer.unref();
  d.onStop(async () => {
    clearInterval(timer);
    await settling;
  });
  log('info', { event: 'cluster-jobs', topic: k.jobsTopic, workers: q.workers, sharedPaths: k.sharedPaths }, `backups of shared volumes go through ${k.jobsTopic}, run by any node`);
}
