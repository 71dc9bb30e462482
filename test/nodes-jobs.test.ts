/**
 * Jobs shared by the nodes: backups submitted through node a's Cinder API go to the Kafka jobs
 * topic and are run by the nodes of the consumer group (at most `workers` each); every node
 * lists every backup as available; each backup's events are in order on Kafka and in the
 * event log of the node that ran it; every backup restores bit-exact on any node.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import type { BlockgateEvent } from '../gateway/events/bus.js';
import { cli, cliJson, mixedContent, sha } from './helpers/core.js';
import { CS, startCluster } from './helpers/cluster.js';
import { consumeUntil, until } from './helpers/kafka.js';

const N = 12;

test.serial('12 backups submitted through node a run on several nodes; every node lists all 12 and indexes their chunks; events in order on Kafka and in the logs; restore anywhere', async (t) => {
  const c = await startCluster(t, ['a', 'b', 'c']);
  const { dirs } = c;
  await until(async () => Object.values(await c.services('a')).filter((s) => s === 'up').length === 3, 30_000, 'three nodes up');
  const images: { id: string; sha: string }[] = [];
  for (let i = 0; i < N; i++) {
    const data = mixedContent(2 * 1024 * 1024, CS, i + 1);
    const file = path.join(c.shared, `v${i}.img`);
    fs.writeFileSync(file, data);
    const v = await cliJson<{ id: string; project_id: string }>(dirs.a!, ['volume', 'create', '--name', `v${i}`, '--file', file]);
    images.push({ id: v.id, sha: sha(data) });
    if (i === 0) t.is((await c.api('a', 'PUT', `/os-quota-sets/${v.project_id}`, { quota_set: { backups: 100 } })).status, 200);
  }
  const ids: string[] = [];
  for (const [i, v] of images.entries()) {
    const r = await c.api<{ backup: { id: string } }>('a', 'POST', '/backups', { backup: { volume_id: v.id, name: `b${i}` } });
    t.is(r.status, 202, JSON.stringify(r.body));
    ids.push(r.body.backup.id);
  }
  // every node lists the 12 as available
  for (const n of ['a', 'b', 'c']) {
    await until(async () => {
      const list = await cliJson<{ id: string; status: string }[]>(dirs[n]!, ['backup', 'list']);
      return ids.every((id) => list.some((b) => b.id === id && b.status === 'available'));
    }, 120_000, `node ${n} lists the ${N} backups available`);
  }
  // and every node's chunk index knows every chunk of them (its own backups' at commit, the others' when it adopted or settled them)
  const indexed = async (n: string) => (await cliJson<{ chunks: number }>(dirs[n]!, ['repo', 'info'])).chunks;
  const counts = await until(async () => {
    const k = await Promise.all(['a', 'b', 'c'].map(indexed));
    return k[0]! > 0 && k.every((x) => x === k[0]) ? k : null;
  }, 60_000, 'the same chunk index on every node').catch(async (e: Error) => {
    t.log(JSON.stringify(await Promise.all(['a', 'b', 'c'].map(indexed))));
    throw e;
  });
  t.log(`chunk index entries on a, b, c: ${counts.join(', ')}`);
  const viaApi = await c.api<{ backups: { id: string; status: string }[] }>('a', 'GET', '/backups/detail?all_tenants=1');
  t.deepEqual(ids.map((id) => viaApi.body.backups.find((b) => b.id === id)?.status), ids.map(() => 'available'), "a's API shows them available");

  // on Kafka: each backup's events in order, from the node that ran it; several nodes ran them
  const msgs = await consumeUntil(c.brokers, c.topics.eventsTopic, (m) => ids.every((id) => m.some((x) => String(x.key) === id && (JSON.parse(x.value!.toString()) as BlockgateEvent).type === 'backup.create.end')), 60_000);
  const ranBy = new Map<string, string>();
  for (const id of ids) {
    const seq = msgs.filter((m) => String(m.key) === id).map((m) => JSON.parse(m.value!.toString()) as BlockgateEvent);
    const types = [...new Set(seq.map((e) => e.id))].map((eid) => seq.find((e) => e.id === eid)!.type);
    t.is(types[0], 'backup.create.start', `${id} starts`);
    t.is(types.at(-1), 'backup.create.end', `${id} ends`);
    t.true(types.slice(1, -1).every((x) => x === 'backup.createprogress'), `${id}: ${types.join(' ')}`);
    const end = seq.find((e) => e.type === 'backup.create.end')!;
    t.is(end.payload.status, 'available');
    ranBy.set(id, end.node);
  }
  const nodes = new Set(ranBy.values());
  t.log(`ran on: ${[...nodes].map((n) => `${n} ${[...ranBy.values()].filter((x) => x === n).length}`).join(', ')}`);
  t.true(nodes.size >= 2, 'at least two nodes ran backups');
  // and in the embedded log of the node that ran it, in the same order
  for (const n of nodes) {
    const log = await c.events(n, 'backup.*');
    for (const id of ids.filter((x) => ranBy.get(x) === n)) {
      const mine = log.filter((e) => e.resource === id).map((e) => e.type);
      t.is(mine[0], 'backup.create.start');
      t.is(mine.at(-1), 'backup.create.end');
    }
  }
  // bit-exact on a node that did not run it
  for (const [i, id] of ids.entries()) {
    if (i % 4) continue;
    const other = ['a', 'b', 'c'].find((n) => n !== ranBy.get(id))!;
    const r = await cli(dirs[other]!, ['backup', 'restore', id, '--name', `r${i}`]);
    t.is(r.code, 0, r.stderr);
    t.is(sha(fs.readFileSync(path.join(dirs[other]!, 'volumes', `r${i}.img`))), images[i]!.sha, `${id} restored on ${other}`);
  }
});
