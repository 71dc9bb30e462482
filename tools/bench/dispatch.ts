/**
 * Job dispatch latency: from a backup's submission (JobService.submitBackup, what the API and
 * the CLI call) to its `backup.create.start` event, on one node (the local queue) and through
 * the Kafka jobs topic with two nodes in the consumer group (claim in the repository
 * included). Small volumes, one backup at a time; median with min and max over the rounds.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomFillSync } from 'node:crypto';
import { Appliance } from '../../gateway/appliance.js';
import { loadConfig } from '../../gateway/config.js';
import { createVolume } from '../../gateway/engine/volumes.js';
import { JobService } from '../../gateway/jobs/service.js';
import { makeHandlers } from '../../gateway/jobs/handlers.js';
import { JobClaims } from '../../gateway/nodes/claims.js';
import { ClusterJobQueue } from '../../gateway/nodes/jobs.js';
import type { Samples } from './stats.js';

async function node(dir: string, repo: string, name: string, brokers?: string, shared?: string): Promise<{ app: Appliance; jobs: JobService }> {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.writeFileSync(path.join(dir, 'blockgate.json'), JSON.stringify({ chunkSize: 65536, repository: { driver: 'dir', path: repo }, node: name, ...(brokers ? { kafka: { brokers, jobsTopic: `bench-jobs-${process.pid}`, sharedPaths: [shared] } } : {}) }), { mode: 0o600 });
  const app = await Appliance.open(loadConfig(dir));
  const jobs = new JobService(app, { workers: 2 });
  const k = app.config.kafka;
  if (k) {
    const q = new ClusterJobQueue(app, jobs.store, makeHandlers(app, jobs.quotas, jobs.store), 2, 64, () => {}, { brokers: k.brokers, topic: k.jobsTopic, node: name, sharedPaths: k.sharedPaths, claims: new JobClaims(app.repo.store, name, 5000), log: () => {} });
    await q.connect();
    jobs.useQueue(q);
  }
  jobs.start();
  return { app, jobs };
}

/** ms from submit to the start event, for `rounds` backups */
async function latencies(submitter: { app: Appliance; jobs: JobService }, watchers: Appliance[], vols: string[]): Promise<number[]> {
  const out: number[] = [];
  for (const v of vols) {
    let t0 = 0;
    let onStart: (ms: number) => void = () => {};
    let onEnd: () => void = () => {};
    const started = new Promise<number>((r) => (onStart = r));
    const ended = new Promise<void>((r) => (onEnd = r));
    const offs = watchers.map((w) =>
      w.events.subscribe((e) => {
        if (e.type === 'backup.create.start') onStart(performance.now() - t0);
        else if (e.type === 'backup.create.end' || e.type === 'backup.create.error') onEnd();
      }),
    );
    t0 = performance.now();
    await submitter.jobs.submitBackup({ volumeId: v, userId: 'admin' });
    out.push(await started);
    await ended;
    for (const o of offs) o();
  }
  return out;
}

export async function benchDispatch(work: string, brokers: string, rounds: number, samples: Samples): Promise<void> {
  const root = path.join(work, 'dispatch');
  fs.rmSync(root, { recursive: true, force: true });
  const shared = path.join(root, 'shared');
  fs.mkdirSync(shared, { recursive: true, mode: 0o700 });
  const repo = path.join(root, 'repo');
  const one = await node(path.join(root, 'one'), path.join(root, 'repo-one'), 'one');
  const a = await node(path.join(root, 'a'), repo, 'a', brokers, shared);
  const b = await node(path.join(root, 'b'), repo, 'b', brokers, shared);
  try {
    const vols = async (app: Appliance, tag: string) => {
      const ids: string[] = [];
      for (let i = 0; i < rounds + 1; i++) {
        const f = path.join(shared, `${tag}${i}.img`);
        fs.writeFileSync(f, randomFillSync(Buffer.alloc(256 * 1024)), { mode: 0o600 });
        ids.push((await createVolume(app, { name: `${tag}${i}`, file: f })).id);
      }
      return ids;
    };
    const local = await latencies(one, [one.app], await vols(one.app, 'l'));
    const cluster = await latencies(a, [a.app, b.app], await vols(a.app, 'c'));
    // the first of each warms up (a consumer group join, first connections)
    for (const ms of local.slice(1)) samples.rate('blockgate', 'job dispatch ms, one node', ms, ms / 1000);
    for (const ms of cluster.slice(1)) samples.rate('blockgate', 'job dispatch ms, 2 nodes via Kafka', ms, ms / 1000);
  } finally {
    for (const n of [one, a, b]) {
      await n.jobs.stop();
      await n.app.close();
    }
    fs.rmSync(root, { recursive: true, force: true });
  }
}
