/**
 * Several nodes: three daemons on 127.0.0.1 (own data dirs, catalogs and ports), one S3
 * repository on the shared radosgw, one Kafka-protocol broker. The service list (CLI and the
 * API's os-services) shows every node up from the heartbeats and a SIGKILLed one down within
 * the heartbeat timeout; every node's catalog follows backups made and deleted on another;
 * the killed node restarts and catches up, and a backup made on one node restores bit-exact
 * on another.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { cli, cliJson, mixedContent, sha } from './helpers/core.js';
import { CS, startCluster } from './helpers/cluster.js';
import { until } from './helpers/kafka.js';

const TIMEOUT_MS = 3000;

test.serial('three nodes on one S3 repository and one broker: service list, catalogs that follow each other, SIGKILL and catch-up, restore anywhere', async (t) => {
  const c = await startCluster(t, ['a', 'b', 'c'], { nodeTimeoutMs: TIMEOUT_MS });
  const { dirs, daemons, root } = c;
  for (const n of ['a', 'b', 'c']) {
    const s = await until(async () => {
      const r = await c.services(n);
      return Object.values(r).filter((x) => x === 'up').length === 3 ? r : null;
    }, 30_000, `node ${n} sees three nodes up`);
    t.deepEqual(s, { a: 'up', b: 'up', c: 'up' });
  }
  // the Cinder API's os-services of node a lists the three nodes too
  const osServices = await until(async () => {
    const r = await c.api<{ services: { host: string; state: string; binary: string }[] }>('a', 'GET', '/os-services');
    return r.body.services.filter((s) => s.state === 'up').length === 3 ? r.body.services : null;
  }, 20_000, 'os-services on a lists three nodes up');
  t.deepEqual(osServices.map((s) => s.host).sort(), ['a', 'b', 'c']);
  t.true(osServices.every((s) => s.binary === 'cinder-backup'));

  // a backup made on a (by the CLI, in its own process): b and c list it as available
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
  const killedAt = Date.now();
  await daemons.c!.stop('SIGKILL');
  for (const n of ['a', 'b']) await until(async () => (await c.services(n)).c === 'down', TIMEOUT_MS + 5000, `node ${n} sees c down`);
  t.log(`c was seen down ${Date.now() - killedAt} ms after the SIGKILL (timeout ${TIMEOUT_MS} ms)`);
  t.deepEqual(await c.services('a'), { a: 'up', b: 'up', c: 'down' });
  t.true((await c.events('a', 'node.*')).some((e) => e.type === 'node.down' && e.resource === 'c'), "node.down c is in a's event log");

  // while c is down: a second backup on a, and the first deleted on b
  const b2 = await cliJson<{ id: string }>(dirs.a!, ['backup', 'create', 'v', '--name', 'second']);
  t.is((await cli(dirs.b!, ['backup', 'delete', b1.id])).code, 0);
  await until(() => listed('a', b1.id, 'deleted'), 10_000, 'a sees the delete made on b');

  // c restarts and catches up: it lists the second backup, the first deleted, and restores it
  await c.start('c');
  await until(() => listed('c', b2.id, 'available'), 10_000, 'c lists the backup made while it was down');
  t.true(await listed('c', b1.id, 'deleted'));
  for (const n of ['a', 'b']) await until(async () => (await c.services(n)).c === 'up', 10_000, `node ${n} sees c up again`);
  t.is((await cli(dirs.c!, ['backup', 'restore', b2.id, '--name', 'back2'])).code, 0);
  t.is(sha(fs.readFileSync(path.join(dirs.c!, 'volumes', 'back2.img'))), sha(data));
});
