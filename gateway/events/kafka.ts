/**
 * The Kafka sink: ships the embedded event log (gateway/events/log.ts) to a Kafka topic with
 * node-rdkafka, one message per event, key = the event's resource id (so each backup's events
 * land on one partition, in order), value = the event as JSON.
 *
 * The log is the queue. `write` only wakes the shipper: the event is already in the log, so a
 * broker that is down or slow never blocks or fails the work that emitted it. The shipper
 * reads the log from its cursor (`events/kafka-cursor.json`) and keeps at most `maxInFlight`
 * messages in memory (librdkafka's queue included); the rest waits in the log. The cursor
 * moves only over events whose delivery report came back good, so events queued while the
 * broker was away are sent when it is back, after a restart of the daemon too (at least once;
 * a consumer drops repeats by event id). Ordering per key holds across retries: librdkafka
 * never times a message out (message.timeout.ms=0) and keeps one request in flight per
 * connection. Losses are counted and logged: a delivery that failed for good (too large,
 * refused), or log segments rotated out before they were shipped (log.ts `onLoss`).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Producer } from 'node-rdkafka';
import type { BlockgateEvent, EventSink } from './bus.js';
import { ERR_QUEUE_FULL, baseConfig, errCode, rdkafka } from './kafka-client.js';
import { KAFKA_CURSOR, type LogPosition, readCursor } from './log.js';
import { LogTail, type TailItem } from './tail.js';

export interface KafkaSinkOptions {
  brokers: string;
  topic: string;
  clientId: string;
  /** messages handed to librdkafka and not yet reported (default 10000) */
  maxInFlight?: number;
  /** where shipping starts when there is no cursor yet (default: the log's end) */
  startAt?: LogPosition;
  log?: (level: 'info' | 'warn' | 'error', fields: Record<string, unknown>, msg: string) => void;
}

export interface KafkaSinkStats {
  connected: boolean;
  delivered: number;
  inFlight: number;
  lost: number;
  /** delivery errors librdkafka reported and retried or gave up on */
  errors: number;
  cursor: LogPosition;
}

interface Entry {
  next: LogPosition;
  done: boolean;
}

export class KafkaSink implements EventSink {
  private producer?: Producer;
  private connected = false;
  private closing = false;
  private readonly tail: LogTail;
  private readonly inflight: Entry[] = [];
  /** read from the log, not yet accepted by librdkafka (its queue was full) */
  private held: TailItem[] = [];
  private cursor: LogPosition;
  private savedCursor = '';
  private pumpQueued = false;
  private timers: NodeJS.Timeout[] = [];
  private retryTimer?: NodeJS.Timeout;
  private lastErrorLog = 0;
  delivered = 0;
  lost = 0;
  errors = 0;
  private readonly maxInFlight: number;
  private readonly log: NonNullable<KafkaSinkOptions['log']>;

  constructor(
    readonly dir: string,
    private readonly opts: KafkaSinkOptions,
  ) {
    this.maxInFlight = opts.maxInFlight ?? 10_000;
    this.log = opts.log ?? (() => {});
    this.cursor = readCursor(dir) ?? opts.startAt ?? { segment: 1, offset: 0 };
    this.tail = new LogTail(dir, this.cursor);
    this.saveCursor();
    // events other processes of this data dir (the CLI) append are picked up by polling
    const poll = setInterval(() => this.wake(), 250);
    const save = setInterval(() => this.saveCursor(), 500);
    poll.unref();
    save.unref();
    this.timers.push(poll, save);
    void this.connect();
  }

  private async connect(): Promise<void> {
    if (this.closing) return;
    const Kafka = await rdkafka();
    const p = new Kafka.Producer({
      ...baseConfig(this.opts.brokers, this.opts.clientId),
      dr_cb: true,
      'message.timeout.ms': 0,
      'max.in.flight.requests.per.connection': 1,
      'retry.backoff.ms': 200,
      'queue.buffering.max.messages': this.maxInFlight,
      'queue.buffering.max.kbytes': 64 * 1024,
      'linger.ms': 5,
    } as never);
    p.on('delivery-report', (err, report) => this.delivered1(err, report.opaque as Entry));
    p.on('event.error', (err) => {
      this.errors++;
      this.rateLimitedWarn({ event: 'kafka-error', code: err.code, error: err.message }, `kafka: ${err.message}`);
    });
    p.setPollInterval(50);
    p.connect({ timeout: 5000 }, (err) => {
      if (err) {
        safeDisconnect(p);
        if (this.closing) return;
        this.rateLimitedWarn({ event: 'kafka-unreachable', brokers: this.opts.brokers, error: err.message }, `kafka: cannot reach ${this.opts.brokers} (${err.message}); events wait in the embedded log`);
        this.retryTimer = setTimeout(() => void this.connect(), 2000);
        this.retryTimer.unref();
        return;
      }
      if (this.closing) {
        safeDisconnect(p);
        return;
      }
      this.producer = p;
      this.connected = true;
      this.log('info', { event: 'kafka-connected', brokers: this.opts.brokers, topic: this.opts.topic }, `kafka: shipping events to ${this.opts.topic}`);
      this.wake();
    });
  }

  private rateLimitedWarn(fields: Record<string, unknown>, msg: string): void {
    if (Date.now() - this.lastErrorLog < 10_000) return;
    this.lastErrorLog = Date.now();
    this.log('warn', fields, msg);
  }

  /** the event is in the log already: only make sure it gets shipped */
  write(_event: BlockgateEvent): void {
    this.wake();
  }

  private wake(): void {
    if (this.pumpQueued || !this.connected || this.closing) return;
    this.pumpQueued = true;
    setImmediate(() => {
      this.pumpQueued = false;
      this.pump();
    });
  }

  private pump(): void {
    const p = this.producer;
    if (!p || !this.connected) return;
    for (;;) {
      const room = this.maxInFlight - this.inflight.length;
      if (room <= 0) return;
      if (!this.held.length) this.held = this.tail.read(Math.min(room, 1000));
      if (!this.held.length) break;
      let i = 0;
      for (; i < this.held.length && this.inflight.length < this.maxInFlight; i++) {
        const { event, next } = this.held[i]!;
        const entry: Entry = { next, done: false };
        try {
          p.produce(this.opts.topic, null, Buffer.from(JSON.stringify(event)), event.resource, Date.parse(event.time) || Date.now(), entry);
        } catch (e) {
          if (errCode(e) === ERR_QUEUE_FULL) break; // librdkafka is full: the delivery reports make room
          this.lost++;
          this.log('error', { event: 'kafka-event-lost', id: event.id, type: event.type, error: (e as Error).message }, `kafka: event ${event.id} (${event.type}) not sent: ${(e as Error).message}`);
          entry.done = true;
        }
        this.inflight.push(entry);
      }
      this.held = this.held.slice(i);
      this.advance();
      if (this.held.length) return;
    }
    if (this.tail.lostSegments.length) {
      const segs = this.tail.lostSegments.splice(0);
      this.log('error', { event: 'kafka-events-lost', segments: segs }, `kafka: log segments ${segs.join(', ')} were rotated out before they were sent (their events are lost to Kafka)`);
    }
  }

  private delivered1(err: { code: number; message: string } | null | undefined, entry: Entry | undefined): void {
    if (!entry) return;
    if (err) {
      // with message.timeout.ms=0 librdkafka retries what can be retried; this one failed for good
      this.lost++;
      this.errors++;
      this.log('error', { event: 'kafka-event-lost', code: err.code, error: err.message }, `kafka: an event could not be delivered: ${err.message}`);
    } else {
      this.delivered++;
    }
    entry.done = true;
    this.advance();
    this.wake();
  }

  /** moves the cursor over the delivered prefix */
  private advance(): void {
    let n = 0;
    while (n < this.inflight.length && this.inflight[n]!.done) n++;
    if (!n) return;
    this.cursor = this.inflight[n - 1]!.next;
    this.inflight.splice(0, n);
  }

  private saveCursor(): void {
    const s = JSON.stringify(this.cursor);
    if (s === this.savedCursor) return;
    const file = path.join(this.dir, KAFKA_CURSOR);
    const tmp = `${file}.${process.pid}.tmp`;
    try {
      fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      fs.writeFileSync(tmp, s, { mode: 0o600 });
      fs.renameSync(tmp, file);
      this.savedCursor = s;
    } catch (e) {
      this.rateLimitedWarn({ event: 'kafka-cursor-failed', error: (e as Error).message }, `kafka: cannot save the shipping cursor: ${(e as Error).message}`);
    }
  }

  stats(): KafkaSinkStats {
    return { connected: this.connected, delivered: this.delivered, inFlight: this.inflight.length, lost: this.lost, errors: this.errors, cursor: this.cursor };
  }

  /** resolves when everything in the log up to now is delivered (or `timeoutMs` passed: false) */
  async drain(timeoutMs = 10_000): Promise<boolean> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      this.pump();
      if (this.connected && !this.inflight.length && !this.held.length) {
        this.held = this.tail.read(1);
        if (!this.held.length) return true;
      }
      if (Date.now() > until) return false;
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** delivers what it can within `timeoutMs`, keeps the cursor; the rest goes at the next start */
  async close(timeoutMs = 3000): Promise<void> {
    if (this.closing) return;
    if (this.connected) await this.drain(timeoutMs);
    this.closing = true;
    for (const t of this.timers) clearInterval(t);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.saveCursor();
    this.tail.close();
    const p = this.producer;
    this.producer = undefined;
    this.connected = false;
    if (p) await safeDisconnect(p, 500);
    if (this.inflight.length) this.log('warn', { event: 'kafka-pending', events: this.inflight.length }, `kafka: ${this.inflight.length} events not delivered yet; they are sent at the next start`);
  }
}

/** disconnects a client that may never have connected (node-rdkafka throws then); resolves when done */
export function safeDisconnect(c: { disconnect(timeout: number, cb: () => void): unknown } | { disconnect(cb: () => void): unknown }, timeoutMs?: number): Promise<void> {
  return new Promise<void>((resolve) => {
    try {
      if (timeoutMs !== undefined) (c as { disconnect(timeout: number, cb: () => void): unknown }).disconnect(timeoutMs, () => resolve());
      else (c as { disconnect(cb: () => void): unknown }).disconnect(() => resolve());
    } catch {
      resolve();
    }
  });
}
