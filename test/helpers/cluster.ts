/** A cluster of daemons for the nodes suites: own data dirs and ports, one S3 prefix on radosgw, one broker. */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { ExecutionContext } from 'ava';
import { DeleteObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { S3Store } from '../../drivers/store/s3.js';
import type { BlockgateEvent } from '../../gateway/events/bus.js';
import { cli, cliJson, tmpDir } from './core.js';
import { getS3, rawS3Client } from './ceph.js';
import { type RunningDaemon, startDaemon } from './daemon.js';
import { sharedBrokers, uniqueTopic, until } from './kafka.js';

const BUCKET = 'bg-nodes-test';
export const CS = 64 * 1024;

export interface Cluster {
  root: string;
  /** a directory every node reaches at the same path (kafka.sharedPaths): volumes there may be backed up by any node */
  shared: string;
  brokers: string;
  topics: { eventsTopic: string; jobsTopic: string; nodesTopic: string };
  dirs: Record<string, string>;
  daemons: Record<string, RunningDaemon>;
  start(n: string): Promise<RunningDaemon>;
  apiPort(n: string): Promise<number>;
  api<T>(n: string, method: string, url: string, body?: unknown): Promise<{ status: number; body: T }>;
  services(n: string): Promise<Record<string, string>>;
  events(n: string, type?: string): Promise<BlockgateEvent[]>;
}

export async function startCluster(t: ExecutionContext, names: string[], kafka: Record<string, unknown> = {}, brokerList?: string): Promise<Cluster> {
  const s3 = await getS3();
  const prefix = `nodes-${randomBytes(5).toString('hex')}`;
  const store = await S3Store.open({ endpoint: s3.endpoint, region: s3.region, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, bucket: BUCKET, createBucket: true });
  await store.close?.();
  const raw = rawS3Client(s3);
  t.teardown(async () => {
    for (;;) {
      const page = await raw.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: `${prefix}/` }));
      const keys = (page.Contents ?? []).map((c) => c.Key!);
      if (!keys.length) break;
      await Promise.all(keys.map((Key) => raw.send(new DeleteObjectCommand({ Bucket: BUCKET, Key }))));
    }
  });
  const root = tmpDir(t);
  const shared = path.join(root, 'shared');
  fs.mkdirSync(shared);
  const brokers = brokerList ?? sharedBrokers();
  const topics = { eventsTopic: uniqueTopic('ev'), jobsTopic: uniqueTopic('jobs'), nodesTopic: uniqueTopic('nodes') };
  const dirs: Record<string, string> = {};
  for (const n of names) {
    dirs[n] = path.join(root, n);
    fs.mkdirSync(dirs[n]!, { recursive: true });
    const repository = { driver: 's3', bucket: BUCKET, prefix, endpoint: s3.endpoint, region: s3.region, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey };
    fs.writeFileSync(path.join(dirs[n]!, 'blockgate.json'), JSON.stringify({ chunkSize: CS, codec: 'zstd', repository, node: n, kafka: { brokers, ...topics, heartbeatMs: 500, nodeTimeoutMs: 3000, sharedPaths: [shared], ...kafka } }), { mode: 0o600 });
  }
  const daemons: Record<string, RunningDaemon> = {};
  const start = async (n: string) => (daemons[n] = await startDaemon(t, dirs[n]!, ['--api-port', '0']));
  // the first creates the repository; the others attach to it
  await start(names[0]!);
  await Promise.all(names.slice(1).map(start));
  const apiPort = (n: string) => until(() => Number(daemons[n]!.log.map((l) => /"event":"api-listening".*"port":(\d+)/.exec(l)).find(Boolean)?.[1] ?? 0), 20_000, `${n}'s API port`);
  return {
    root,
    shared,
    brokers,
    topics,
    dirs,
    daemons,
    start,
    apiPort,
    api: async <T>(n: string, method: string, url: string, body?: unknown) => {
      const r = await fetch(`http://127.0.0.1:${await apiPort(n)}/v3/admin${url}`, { method, headers: { 'X-Auth-Token': 'admin:admin', ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : undefined });
      return { status: r.status, body: (await r.json()) as T };
    },
    services: async (n) => Object.fromEntries((await cliJson<{ node: string; status: string }[]>(dirs[n]!, ['service', 'list'])).map((r) => [r.node, r.status])),
    events: async (n, type) => {
      const r = await cli(dirs[n]!, ['-f', 'json', 'events', ...(type ? ['--type', type] : [])]);
      return r.stdout.trim() ? r.stdout.trim().split('\n').map((l) => JSON.parse(l) as BlockgateEvent) : [];
    },
  };
}
