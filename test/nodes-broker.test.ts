/**
 * The Kafka broker stopped while a cluster runs backups: the running backups complete (they
 * need only the repository), the submitting node settles them from the repository, and the
 * daemons keep answering; once the broker is back, the events emitted during the outage (each
 * backup's create.end) are delivered by the producers that queued them.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomFillSync } from 'node:crypto';
import { cliJson } from './helpers/core.js';
import { startCluster } from './helpers/cluster.js';
import { consumeUntil, ownBroker, until } from './helpers/kafka.js';

test.serial('broker stopped during backups: they complete and settle on the submitting node, the daemons keep answering, and the events of the outage are delivered once it is back', async (t) => {
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
  // the broker process is gone: what is emitted from now on cannot have reached it
  const stoppedAt = Date.now();
  const status = async (id: string) => (await cliJson<{ status: string }>(c.dirs.a!, ['backup', 'show', id])).status;
  try {
    for (const id of ids) await until(async () => (await status(id)) === 'available', 240_000, `${id} available on a with the broker down`);
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
  // the broker comes back (empty: the mock keeps nothing, so what was delivered before the stop is gone with it):
  // every backup.create.end emitted during the outage is delivered after it, by the producer that queued it
  const ends = await until(async () => {
    const all = (await Promise.all(['a', 'b'].map((n) => c.events(n, 'backup.create.end')))).flat().filter((e) => ids.includes(e.resource));
    return ids.every((id) => all.some((e) => e.resource === id)) ? all : null;
  }, 60_000, "both backups' create.end in the nodes' logs");
  // a backup of a volume only a reaches runs there, broker or not: its events are surely of the outage
  const f = path.join(c.dirs.a!, 'local.img');
  fs.writeFileSync(f, randomFillSync(Buffer.alloc(1024 * 1024)));
  const v = await cliJson<{ id: string }>(c.dirs.a!, ['volume', 'create', '--name', 'local', '--file', f]);
  const r = await c.api<{ backup: { id: string } }>('a', 'POST', '/backups', { backup: { volume_id: v.id, name: 'local' } });
  t.is(r.status, 202);
  await until(async () => (await status(r.body.backup.id)) === 'available', 120_000, 'the local backup available with the broker down');
  const localEnd = await until(async () => (await c.events('a', 'backup.create.end')).find((e) => e.resource === r.body.backup.id), 30_000, "the local backup's create.end");
  // and the cluster backups' ends, those emitted after the stop (one that ended before went to the old broker, gone with it)
  const outage = [localEnd, ...ends.filter((e) => Date.parse(e.time) > stoppedAt)];
  t.log(`${outage.length - 1} of the cluster backups ended during the outage`);
  broker.start();
  const has = (m: { value?: Buffer | null }[], id: string) => m.some((x) => x.value!.toString().includes(`"id":"${id}"`));
  const events = await consumeUntil(c.brokers, c.topics.eventsTopic, (m) => outage.every((e) => has(m, e.id)), 180_000);
  if (!outage.every((e) => has(events, e.id))) {
    t.log(JSON.stringify(events.map((m) => [String(m.key).slice(0, 8), (JSON.parse(m.value!.toString()) as { type: string; node: string }).type])));
    for (const n of ['a', 'b']) t.log(n, c.daemons[n]!.log.filter((l) => /kafka|event/.test(l)).slice(-20).join('\n'));
  }
  for (const e of outage) t.true(has(events, e.id), `${e.resource}: its backup.create.end (node ${e.node}, emitted during the outage) was delivered after it`);
});
