/**
 * Several nodes: three daemons on 127.0.0.1 (own data dirs, catalogs and ports), one S3
 * repository on the shared radosgw, one Kafka-protocol broker. The service list shows every
 * node up from the heartbeats and a SIGKILLed one down within the heartbeat timeout; every
 * node's catalog follows backups made and deleted on another within a bound; the killed node
 * restarts and catches up, and a backup made on one node restores bit-exact on another.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { DeleteObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { S3Store } from '../drivers/store/s3.js';
import type { BlockgateEvent } from '../gateway/events/bus.js';
import { cli, cliJson, mixedContent, sha, tmpDir } from './helpers/core.js';
import { getS3, rawS3Client } from './helpers/ceph.js';
import { type RunningDaemon, startDaemon } from './helpers/daemon.js';
import { sharedBrokers, uniqueTopic, until } from './helpers/kafka.js';

const BUCKET = 'bg-nodes-test';
const CS = 64 * 1024;
const TIMEOUT_MS = 3000;

interface Row {
  node: string;
  status: string;
}

test.serial('three nodes on one S3 repository and one broker: service list, catalogs that follow each other, SIGKILL and catch-up, restore anywhere', async (t) => {
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
  const brokers = sharedBrokers();
  const topics = { eventsTopic: uniqueTopic('ev'), jobsTopic: uniqueTopic('jobs'), nodesTopic: uniqueTopic('nodes') };
  const dirs: Record<string, string> = {};
  for (const n of ['a', 'b', 'c']) {
    dirs[n] = path.join(root, n);
    fs.mkdirSync(dirs[n]!, { recursive: true });
    const repository = { driver: 's3', bucket: BUCKET, prefix, endpoint: s3.endpoint, region: s3.region, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey };
    fs.writeFileSync(path.join(dirs[n]!, 'blockgate.json'), JSON.stringify({ chunkSize: CS, codec: 'zstd', repository, node: n, kafka: { brokers, ...topics, heartbeatMs: 500, nodeTimeoutMs: TIMEOUT_MS } }), { mode: 0o600 });
  }
  const daemons: Record<string, RunningDaemon> = {};
  // the first creates the repository; the others attach to it
  const api = ['--api-port', '0'];
  daemons.a = await startDaemon(t, dirs.a!, api);
  [daemons.b, daemons.c] = await Promise.all([startDaemon(t, dirs.b!, api), startDaemon(t, dirs.c!, api)]);

  const services = async (n: string) => cliJson<Row[]>(dirs[n]!, ['service', 'list']);
  const statusOf = (rows: Row[]) => Object.fromEntries(rows.map((r) => [r.node, r.status]));
  for (const n of ['a', 'b', 'c']) {
    const rows = await until(async () => {
      const r = await services(n);
      return r.filter((x) => x.status === 'up').length === 3 ? r : null;
    }, 30_000, `node ${n} sees three nodes up`);
    t.deepEqual(statusOf(rows), { a: 'up', b: 'up', c: 'up' });
  }
  // the Cinder API's os-services of node a lists the three nodes too
  const apiPort = await until(() => daemons.a!.log.map((l) => /"event":"api-listening".*"port":(\d+)/.exec(l)).find(Boolean)?.[1], 20_000, "a's API port");
  const osServices = await until(async () => {
    const r = await fetch(`http://127.0.0.1:${apiPort}/v3/admin/os-services`, { headers: { 'X-Auth-Token': 'admin:admin' } });
    const j = (await r.json()) as { services: { host: string; state: string; binary: string }[] };
    return j.services.filter((s) => s.state === 'up').length === 3 ? j.services : null;
  }, 20_000, 'os-services on a lists three nodes up');
  t.deepEqual(osServices.map((s) => s.host).sort(), ['a', 'b', 'c']);
  t.true(osServices.every((s) => s.binary === 'cinder-backup'));

  // a backup made on a: b and c list it, as available, soon after its commit
  const data = mixedContent(1024 * 1024, CS);
  fs.writeFileSync(path.join(root, 'vol.img'), data);
  await cliJson(dirs.a!, ['volume', 'create', '--name', 'v', '--file', path.join(root, 'vol.img')]);
  const b1 = await cliJson<{ id: string; status: string }>(dirs.a!, ['backup', 'create', 'v', '--name', 'first']);
  t.is(b1.status, 'available');
  const committed = Date.now();
  const listed = async (n: string, id: string, status: string) => {
    const r = await cli(dirs[n]!, ['-f', 'json', 'backup', 'show', id]);
    return r.code === 0 && (JSON.parse(r.stdout) as { status: string }).status === status;
  };
  for (const n of ['b', 'c']) await until(() => listed(n, b1.id, 'available'), 10_000, `node ${n} lists ${b1.id}`);
  t.log(`b and c listed the backup ${Date.now() - committed} ms after its commit (CLI round trips included)`);

  // restored bit-exact on another node
  t.is((await cli(dirs.b!, ['backup', 'restore', b1.id, '--name', 'back'])).code, 0);
  t.is(sha(fs.readFileSync(path.join(dirs.b!, 'volumes', 'back.img'))), sha(data));

  // SIGKILL of c: a and b see it down within the heartbeat timeout (plus the poll)
  daemons.c!.child.kill('SIGKILL');
  const killedAt = Date.now();
  await daemons.c!.stop('SIGKILL');
  for (const n of ['a', 'b']) await until(async () => statusOf(await services(n)).c === 'down', TIMEOUT_MS + 5000, `node ${n} sees c down`);
  t.log(`c was seen down ${Date.now() - killedAt} ms after the SIGKILL (timeout ${TIMEOUT_MS} ms)`);
  t.deepEqual(statusOf(await services('a')), { a: 'up', b: 'up', c: 'down' });
  const events = (await cli(dirs.a!, ['-f', 'json', 'events', '--type', 'node.*'])).stdout.trim().split('\n').map((l) => JSON.parse(l) as BlockgateEvent);
  t.true(events.some((e) => e.type === 'node.down' && e.resource === 'c'), 'node.down c is in a\'s event log');

  // while c is down: a second backup on a, and the first deleted on b
  const b2 = await cliJson<{ id: string }>(dirs.a!, ['backup', 'create', 'v', '--name', 'second']);
  t.is((await cli(dirs.b!, ['backup', 'delete', b1.id])).code, 0);
  await until(() => listed('a', b1.id, 'deleted'), 10_000, 'a sees the delete made on b');

  // c restarts and catches up: it lists the second backup, the first deleted, and restores it
  daemons.c = await startDaemon(t, dirs.c!);
  await until(() => listed('c', b2.id, 'available'), 10_000, 'c lists the backup made while it was down');
  t.true(await listed('c', b1.id, 'deleted'));
  for (const n of ['a', 'b']) await until(async () => statusOf(await services(n)).c === 'up', 10_000, `node ${n} sees c up again`);
  t.is((await cli(dirs.c!, ['backup', 'restore', b2.id, '--name', 'back2'])).code, 0);
  t.is(sha(fs.readFileSync(path.join(dirs.c!, 'volumes', 'back2.img'))), sha(data));
});
