/**
 * Reading every partition of a topic from its end, with no consumer group (no join delay, no
 * committed offsets): what each node does with the heartbeats and the other nodes' events. A
 * broker that is away is waited for (librdkafka reconnects); partitions added later are picked
 * up by a metadata refresh (one request at a time: each holds a thread of libuv's pool while
 * the broker is away). Bad messages are the caller's business: `onMessage` gets bytes.
 */
import { randomUUID } from 'node:crypto';
import type { KafkaConsumer, Message } from 'node-rdkafka';
import { baseConfig, rdkafka } from '../events/kafka-client.js';
import { safeDisconnect } from '../events/kafka.js';

export interface TopicTail {
  close(): Promise<void>;
}

export async function tailTopic(brokers: string, topic: string, clientId: string, onMessage: (m: Message) => void, onError: (e: Error) => void): Promise<TopicTail> {
  const Kafka = await rdkafka();
  let closed = false;
  let consumer: KafkaConsumer | undefined;
  const assigned = new Set<number>();
  let refresh: NodeJS.Timeout | undefined;
  let retry: NodeJS.Timeout | undefined;

  // a metadata request blocks a thread of libuv's pool (4 by default, shared with every file read
  // and write of the process) until it answers or times out: at most one at a time per tail, so a
  // broker that is down never starves the backups of threads (it did: a chunk every 5 s); after a
  // failed one, the next waits 10 s
  let asking = false;
  let notBefore = 0;
  const assignNew = (c: KafkaConsumer) => {
    if (asking || Date.now() < notBefore) return;
    asking = true;
    c.getMetadata({ topic, timeout: 2000 }, (err, md) => {
      asking = false;
      if (err) notBefore = Date.now() + 10_000;
      if (err || closed) return;
      const parts = md.topics.find((x) => x.name === topic)?.partitions ?? [];
      const fresh = parts.map((p) => p.id).filter((p) => !assigned.has(p));
      if (!fresh.length) return;
      for (const p of fresh) assigned.add(p);
      // partitions found at the start begin at their end; ones added later from their beginning
      const first = assigned.size === fresh.length;
      c.incrementalAssign(fresh.map((partition) => ({ topic, partition, offset: (first ? 'end' : 'beginning') as unknown as number })));
    });
  };

  const connect = () => {
    if (closed) return;
    const c = new Kafka.KafkaConsumer(
      { ...baseConfig(brokers, clientId), 'group.id': `blockgate-tail-${randomUUID()}`, 'enable.auto.commit': false, 'allow.auto.create.topics': true, 'fetch.wait.max.ms': 50 } as never,
      { 'auto.offset.reset': 'latest' },
    );
    c.on('data', (m) => {
      try {
        onMessage(m);
      } catch (e) {
        onError(e as Error);
      }
    });
    c.on('event.error', (e) => onError(new Error(e.message)));
    c.connect({ timeout: 5000 }, (err) => {
      if (err || closed) {
        void safeDisconnect(c);
        if (!closed) {
          retry = setTimeout(connect, 2000);
          retry.unref();
        }
        return;
      }
      consumer = c;
      c.setDefaultConsumeTimeout(100);
      assignNew(c);
      c.consume();
      refresh = setInterval(() => assignNew(c), 2000);
      refresh.unref();
    });
  };
  connect();
  return {
    close: async () => {
      closed = true;
      if (refresh) clearInterval(refresh);
      if (retry) clearTimeout(retry);
      if (consumer) await safeDisconnect(consumer);
    },
  };
}
