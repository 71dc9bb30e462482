/**
 * A real Kafka-protocol broker for tests (tools/kafka/kafka.sh: librdkafka's mock cluster as a
 * process on 127.0.0.1), and a consumer that collects what a topic holds.
 *
 * - `sharedBrokers()`: the broker tools/test.sh started (KAFKA_BROKERS), or one started here
 *   for this test file (stopped on exit).
 * - `ownBroker(t)`: a broker of the test's own on a fixed free port, which the test may stop
 *   and start again at the same address (a restart is empty: the mock keeps nothing).
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import type { KafkaConsumer, Message } from 'node-rdkafka';
import { rdkafka } from '../../gateway/events/kafka-client.js';

export const KAFKA_SH = fileURLToPath(new URL('../../../tools/kafka/kafka.sh', import.meta.url));

function up(dir: string, port = 0): string {
  const out = execFileSync('bash', [KAFKA_SH, 'up', dir, '1'], { env: { ...process.env, KAFKA_MOCK_PORT: String(port) }, encoding: 'utf8' });
  const m = /KAFKA_BROKERS=(\S+)/.exec(out);
  if (!m) throw new Error(`kafka.sh up printed no brokers: ${out}`);
  return m[1]!;
}
function down(dir: string): void {
  execFileSync('bash', [KAFKA_SH, 'down', dir]);
}

let shared: string | undefined;
export function sharedBrokers(): string {
  if (process.env.KAFKA_BROKERS) return process.env.KAFKA_BROKERS;
  if (!shared) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bg-kafka-'));
    shared = up(dir);
    process.once('exit', () => down(dir));
  }
  return shared;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

export interface OwnBroker {
  brokers: string;
  stop(): void;
  start(): void;
}

export async function ownBroker(t: ExecutionContext): Promise<OwnBroker> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bg-kafka-own-'));
  const port = await freePort();
  const b: OwnBroker = {
    brokers: up(dir, port),
    stop: () => down(dir),
    start: () => {
      up(dir, port);
    },
  };
  t.teardown(() => down(dir));
  return b;
}

/** a unique topic name for one test */
export const uniqueTopic = (what: string): string => `t-${what}-${randomUUID().slice(0, 8)}`;

/**
 * Reads `topic` from the beginning until `done(messages)` holds or `timeoutMs` passes; the
 * messages in the order each partition gave them.
 */
export async function consumeUntil(brokers: string, topic: string, done: (msgs: Message[]) => boolean, timeoutMs = 30_000): Promise<Message[]> {
  const Kafka = await rdkafka();
  const c: KafkaConsumer = new Kafka.KafkaConsumer(
    { 'bootstrap.servers': brokers, 'group.id': `test-${randomUUID()}`, 'session.timeout.ms': 4000, 'heartbeat.interval.ms': 1000, 'enable.auto.commit': false, 'topic.metadata.refresh.interval.ms': 1000, log_level: 3 } as never,
    { 'auto.offset.reset': 'earliest' },
  );
  await new Promise<void>((resolve, reject) => c.connect({ timeout: 10_000 }, (err) => (err ? reject(err) : resolve())));
  const msgs: Message[] = [];
  try {
    c.subscribe([topic]);
    const until = Date.now() + timeoutMs;
    while (!done(msgs) && Date.now() < until) {
      const got = await new Promise<Message[]>((resolve, reject) => c.consume(500, (err, m) => (err ? reject(err) : resolve(m))));
      msgs.push(...got);
      if (!got.length) await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    await new Promise<void>((r) => c.disconnect(() => r()));
  }
  return msgs;
}

/** poll `f` until it returns a truthy value (or throw after `timeoutMs`) */
export async function until<T>(f: () => T | Promise<T>, timeoutMs = 20_000, what = 'condition'): Promise<NonNullable<T>> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v as NonNullable<T>;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** produces raw messages to a topic and waits for their delivery reports */
export async function produceRaw(brokers: string, topic: string, messages: { key: string; value: Buffer }[]): Promise<void> {
  const Kafka = await rdkafka();
  const p = new Kafka.Producer({ 'bootstrap.servers': brokers, dr_cb: true, log_level: 3 } as never);
  await new Promise<void>((resolve, reject) => p.connect({ timeout: 10_000 }, (err) => (err ? reject(err) : resolve())));
  p.setPollInterval(20);
  let pending = messages.length;
  const done = new Promise<void>((resolve, reject) => {
    p.on('delivery-report', (err) => {
      if (err) reject(new Error(err.message));
      else if (--pending === 0) resolve();
    });
  });
  for (const m of messages) p.produce(topic, null, m.value, m.key, Date.now());
  await done;
  await new Promise<void>((r) => p.disconnect(() => r()));
}
