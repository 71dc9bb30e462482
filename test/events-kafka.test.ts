/**
 * The Kafka sink against a real Kafka-protocol broker (tools/kafka: librdkafka's mock cluster
 * as a process), through node-rdkafka: key = resource id, each resource's events in order,
 * delivery reports checked; a broker that is down at the start or stopped during work never
 * blocks or fails anything, and what was emitted meanwhile is delivered once it is back; a
 * daemon restart resumes shipping from its cursor; events rotated out of a full log before
 * they could be sent are counted and logged as lost.
 */
import test from 'ava';
import path from 'node:path';
import type { Message } from 'node-rdkafka';
import { Appliance } from '../gateway/appliance.js';
import { loadConfig } from '../gateway/config.js';
import type { BlockgateEvent } from '../gateway/events/bus.js';
import { collectGarbage } from '../gateway/engine/gc.js';
import { mixedContent, tmpDir, writeConfig } from './helpers/core.js';
import { backup, volumeFrom } from './helpers/engine.js';
import { consumeUntil, ownBroker, sharedBrokers, uniqueTopic, until } from './helpers/kafka.js';

const decode = (m: Message) => JSON.parse(m.value!.toString()) as BlockgateEvent;
const ids = (msgs: Message[]) => new Set(msgs.map((m) => decode(m).id));

async function appWithKafka(t: { teardown(f: () => unknown): void }, dataDir: string, brokers: string, topic: string, extra: Record<string, unknown> = {}): Promise<{ app: Appliance; logs: string[] }> {
  writeConfig(dataDir, { chunkSize: 64 * 1024, codec: 'zstd', node: 'node-a', kafka: { brokers, eventsTopic: topic }, ...extra } as never);
  const app = await Appliance.open(loadConfig(dataDir));
  const logs: string[] = [];
  app.shipEvents((level, fields, msg) => logs.push(`${level} ${JSON.stringify(fields)} ${msg}`));
  t.teardown(() => app.close().catch(() => {}));
  return { app, logs };
}

test('every event goes to the topic keyed by its resource, each resource in order, delivery confirmed', async (t) => {
  const brokers = sharedBrokers();
  const topic = uniqueTopic('order');
  const { app } = await appWithKafka(t, path.join(tmpDir(t), 'data'), brokers, topic);
  const sent: BlockgateEvent[] = [];
  for (let i = 0; i < 300; i++) sent.push(app.events.emit(i % 3 === 0 ? 'backup.createprogress' : 'instant.progress', `res-${i % 5}`, { percent: i }));
  t.true(await app.kafkaSink!.drain(30_000), 'every delivery report came back');
  const st = app.kafkaSink!.stats();
  t.is(st.delivered, 300);
  t.is(st.lost, 0);
  const msgs = await consumeUntil(brokers, topic, (m) => m.length >= 300);
  t.is(msgs.length, 300);
  for (const m of msgs) t.is(String(m.key), decode(m).resource, 'key = resource id');
  for (let r = 0; r < 5; r++) {
    const got = msgs.filter((m) => String(m.key) === `res-${r}`).map((m) => decode(m).id);
    t.deepEqual(got, sent.filter((e) => e.resource === `res-${r}`).map((e) => e.id), `res-${r} in order`);
  }
  t.is(decode(msgs[0]!).node, 'node-a');
});

test('a broker that is down: emit never waits, a GC and a backup complete, and the events are delivered once the broker is back', async (t) => {
  const broker = await ownBroker(t);
  const topic = uniqueTopic('down');
  broker.stop();
  const { app, logs } = await appWithKafka(t, path.join(tmpDir(t), 'data'), broker.brokers, topic);
  await volumeFrom(app, 'v', mixedContent(512 * 1024, 64 * 1024));
  const b = await backup(app, 'v');
  t.is(b.status, 'available');
  await collectGarbage(app);
  const t0 = Date.now();
  const during = [app.events.emit('backup.create.end', b.id, { status: 'available' })];
  for (let i = 0; i < 50; i++) during.push(app.events.emit('backup.createprogress', b.id, { percent: i }));
  const emitMs = Date.now() - t0;
  t.log(`51 emits with the broker down: ${emitMs} ms`);
  t.false(app.kafkaSink!.stats().connected);
  await until(() => logs.some((l) => /kafka-unreachable/.test(l)), 20_000, 'the unreachable broker logged');
  broker.start();
  t.true(await app.kafkaSink!.drain(60_000), 'delivered after the broker came back');
  const want = [...during.map((e) => e.id)];
  const msgs = await consumeUntil(broker.brokers, topic, (m) => want.every((id) => ids(m).has(id)));
  const got = msgs.map(decode).filter((e) => e.resource === b.id).map((e) => e.id);
  t.deepEqual(got.filter((id) => want.includes(id)), want, "the backup's events, in order");
  t.true(msgs.some((m) => decode(m).type === 'gc.end'), 'the gc.end emitted while it was down');
  t.is(app.kafkaSink!.stats().lost, 0);
});

test('the broker stopped during work and started again: the events of the outage arrive; a restarted daemon resumes from its cursor', async (t) => {
  const broker = await ownBroker(t);
  const topic = uniqueTopic('restart');
  const dataDir = path.join(tmpDir(t), 'data');
  const first = await appWithKafka(t, dataDir, broker.brokers, topic);
  const before = first.app.events.emit('gc.end', 'repo', { n: 1 });
  t.true(await first.app.kafkaSink!.drain(30_000));
  broker.stop();
  const outage = [first.app.events.emit('verify.end', 'b1', { status: 'ok' }), first.app.events.emit('verify.end', 'b1', { status: 'failed' })];
  await first.app.close(); // the daemon stops while the broker is away: nothing is lost, the cursor stays
  const second = await appWithKafka(t, dataDir, broker.brokers, topic);
  const afterRestart = second.app.events.emit('verify.end', 'b1', { status: 'ok', n: 3 });
  broker.start();
  t.true(await second.app.kafkaSink!.drain(60_000));
  const want = [...outage, afterRestart].map((e) => e.id);
  const msgs = await consumeUntil(broker.brokers, topic, (m) => want.every((id) => ids(m).has(id)));
  const b1 = msgs.map(decode).filter((e) => e.resource === 'b1').map((e) => e.id);
  t.deepEqual([...new Set(b1)], want, 'b1 in order, nothing lost across the outage and the restart');
  t.false(ids(msgs).has(before.id), 'the restarted (empty) broker does not have what was delivered before the outage; it was not sent again');
  t.is(second.app.kafkaSink!.stats().lost, 0);
});

test('the broker restarted under a running sink: the events of the outage are delivered by the same producer', async (t) => {
  const broker = await ownBroker(t);
  const topic = uniqueTopic('live');
  const { app, logs } = await appWithKafka(t, path.join(tmpDir(t), 'data'), broker.brokers, topic);
  app.events.emit('gc.end', 'repo', { n: 1 });
  t.true(await app.kafkaSink!.drain(30_000), 'connected and shipping before the outage');
  broker.stop();
  const outage = [app.events.emit('backup.create.start', 'b2', { status: 'creating' }), app.events.emit('backup.create.end', 'b2', { status: 'available' })];
  broker.start();
  const after = app.events.emit('backup.create.end', 'b3', { status: 'available' });
  const want = [...outage, after].map((e) => e.id);
  const msgs = await consumeUntil(broker.brokers, topic, (m) => want.every((id) => ids(m).has(id)), 90_000).catch(() => []);
  if (!want.every((id) => ids(msgs).has(id))) t.log(JSON.stringify(app.kafkaSink!.stats()), logs.join('\n'));
  t.deepEqual(msgs.map(decode).filter((e) => e.resource === 'b2').map((e) => e.id), outage.map((e) => e.id), "the outage's events, in order");
  t.true(ids(msgs).has(after.id), 'an event emitted after the restart');
  t.is(app.kafkaSink!.stats().lost, 0);
});

test('a log too small for an outage: the events rotated out before they were sent are counted and logged as lost; the rest arrive', async (t) => {
  const broker = await ownBroker(t);
  const topic = uniqueTopic('loss');
  broker.stop();
  const stderr: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: never[]) => {
    stderr.push(String(chunk));
    return write(chunk, ...rest);
  }) as typeof process.stderr.write;
  t.teardown(() => {
    process.stderr.write = write;
  });
  const { app, logs } = await appWithKafka(t, path.join(tmpDir(t), 'data'), broker.brokers, topic, { events: { maxBytes: 64 * 1024 } });
  const pad = 'x'.repeat(300);
  const sent: string[] = [];
  for (let i = 0; i < 1000; i++) sent.push(app.events.emit('backup.createprogress', 'b1', { percent: i % 100, pad }).id);
  const lost = app.eventsLost;
  t.true(lost > 0, 'the rotation counted what Kafka never got');
  t.is(stderr.filter((l) => l.includes('"events-lost"')).length, 1, 'and logged it once, not once per segment');
  broker.start();
  t.true(await app.kafkaSink!.drain(60_000));
  const msgs = await consumeUntil(broker.brokers, topic, (m) => m.length >= sent.length - lost, 30_000);
  const got = msgs.map((m) => decode(m).id);
  t.is(got.length + lost, sent.length, `${got.length} delivered + ${lost} counted lost = ${sent.length} emitted`);
  t.deepEqual(got, sent.slice(lost), 'the newest ones arrive, in order');
  t.true(logs.some((l) => /kafka-events-lost/.test(l)), 'the shipper logged the segments it found gone');
});
