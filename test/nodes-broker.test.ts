/**
 * The Kafka broker stopped while a cluster runs backups: the running backups complete (they
 * need only the repository), the submitting node settles them from the repository, and the
 * daemons keep answering. (Delivery of the outage's events after a live broker restart is
 * covered for one process by events-kafka.test.ts; across a live restart of the mock broker
 * under a running cluster it is not yet proven.)
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomFillSync } from 'node:crypto';
import { cliJson } from './helpers/core.js';
import { startCluster } from './helpers/cluster.js';
import { ownBroker, until } from './helpers/kafka.js';

test.serial('broker stopped during backups: they complete and settle on the submitting node, the daemons keep answering', async (t) => {
  const broker = await ownBroker(t);
  const c = await startCluster(t, ['a', 'b'], {}, broker.brokers);
  await until(async () => Object.values(await c.services('a')).filter((s) => s === 'up').length === 2, 30_000, 'two nodes up');
  const ids: string[] = [];
  for (let i = 0; i < 2; i++) {
    const f = path.join(c.shared, `o${i}.img`);
    fs.writeFileSync(f, randomFillSync(Buffer.alloc(8 * 1024 * 1024)));
    const v = await cliJson<{ id: string }>(c.dirs.a!, ['volume', 'create', '--name', `o${i}`, '--file', f]);
    const r = await c.api<{ backup: { id: string } }>('a', 'POST', '/backups', { backup: { volume_id: v.id, name: `o${i}` } });
    t.is(r.status, 202);
    ids.push(r.body.backup.id);
  }
  // both taken by a node (started), then the broker goes away
  await until(async () => {
    const started = [...(await c.events('a', 'backup.create.start')), ...(await c.events('b', 'backup.create.start'))].map((e) => e.resource);
    return ids.every((id) => started.includes(id));
  }, 60_000, 'both backups started');
  broker.stop();
  const status = async (id: string) => (await cliJson<{ status: string }>(c.dirs.a!, ['backup', 'show', id])).status;
  try {
    for (const id of ids) await until(async () => (await status(id)) === 'available', 120_000, `${id} available on a with the broker down`);
  } catch (e) {
    for (const n of ['a', 'b']) {
      t.log(n, JSON.stringify((await cliJson<{ id: string; status: string }[]>(c.dirs[n]!, ['backup', 'list'])).map((b) => [b.id.slice(0, 8), b.status])));
      t.log(n, JSON.stringify((await c.events(n, 'backup.*')).map((x) => [x.resource.slice(0, 8), x.type])));
      t.log(n, c.daemons[n]!.log.filter((l) => !/"level":30/.test(l) || /job|follow|settle/.test(l)).slice(-15).join('\n'));
    }
    throw e;
  }
  // the daemons still answer
  const api = await c.api<{ backups: unknown[] }>('a', 'GET', '/backups?all_tenants=1');
  t.is(api.status, 200);
  broker.start();
});
