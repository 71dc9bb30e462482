/**
 * Suite `events`: events per second into the embedded event log (emit → one line appended,
 * the way every job, export and GC emits), and into Kafka (emit → delivery report, through
 * the log-shipping sink, against tools/kafka's broker on 127.0.0.1), in interleaved rounds,
 * median with min and max; and job dispatch latency (dispatch.ts). BENCH_QUICK=1: one round of fewer events.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { EventBus } from '../../gateway/events/bus.js';
import { EventLog } from '../../gateway/events/log.js';
import { KafkaSink } from '../../gateway/events/kafka.js';
import type { Row } from './core.js';
import { ROUNDS, Samples } from './stats.js';
import { benchDispatch } from './dispatch.js';

const KAFKA_SH = fileURLToPath(new URL('../../../tools/kafka/kafka.sh', import.meta.url));
const N = process.env.BENCH_QUICK === '1' ? 10_000 : 100_000;

function emitAll(bus: EventBus, n: number): void {
  for (let i = 0; i < n; i++) bus.emit('backup.createprogress', `backup-${i % 64}`, { backup_id: `backup-${i % 64}`, status: 'creating', percent: i % 100, bytes: i * 4194304 });
}

async function intoLog(dir: string): Promise<number> {
  fs.rmSync(dir, { recursive: true, force: true });
  const bus = new EventBus('bench');
  bus.addSink(new EventLog(dir, { maxBytes: 1024 ** 3 }));
  const t0 = process.hrtime.bigint();
  emitAll(bus, N);
  await bus.close(); // fdatasync included
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function intoKafka(dir: string, brokers: string, round: number): Promise<number> {
  fs.rmSync(dir, { recursive: true, force: true });
  const bus = new EventBus('bench');
  const log = new EventLog(dir, { maxBytes: 1024 ** 3 });
  bus.addSink(log);
  const sink = new KafkaSink(dir, { brokers, topic: `bench-events-${process.pid}-${round}`, clientId: 'bench', startAt: log.end() });
  bus.addSink(sink);
  if (!(await sink.drain(30_000))) throw new Error(`the broker at ${brokers} did not answer`);
  const t0 = process.hrtime.bigint();
  emitAll(bus, N);
  if (!(await sink.drain(120_000))) throw new Error('kafka did not take the events within 120 s');
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  if (sink.stats().delivered !== N) throw new Error(`${sink.stats().delivered} of ${N} delivered`);
  await bus.close();
  return s;
}

export async function benchEvents(work: string): Promise<Row[]> {
  const dir = path.join(work, 'events');
  const kdir = path.join(work, 'kafka');
  const out = execFileSync('bash', [KAFKA_SH, 'up', kdir], { encoding: 'utf8' });
  const brokers = /KAFKA_BROKERS=(\S+)/.exec(out)![1]!;
  const samples = new Samples('events');
  try {
    for (let r = 0; r < ROUNDS; r++) {
      const a = await intoLog(dir);
      samples.rate('blockgate', 'events/s into the event log', N / a, a);
      const b = await intoKafka(dir, brokers, r);
      samples.rate('blockgate', 'events/s into Kafka', N / b, b);
    }
    await benchDispatch(work, brokers, Math.max(3, ROUNDS * 3), samples);
  } finally {
    execFileSync('bash', [KAFKA_SH, 'down', kdir]);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return samples.rows();
}
