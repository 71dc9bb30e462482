/**
 * The event bus: one typed stream of what the appliance did, in the daemon and the CLI alike.
 * Producers (jobs, the engine's callers, exports, GC, verify) call `emit`; sinks (the embedded
 * event log, Kafka) and in-process subscribers receive every event in emit order. `emit` never
 * throws and never waits: a failing sink or subscriber is counted and logged, never able to
 * block or fail the work that emitted the event.
 *
 * Names follow Cinder's notifications (`backup.create.start|end|error`, `backup.createprogress`,
 * `backup.delete.*`, `backup.restore.*`, `snapshot.*`, `volume.*`) plus blockgate's own.
 */
import { randomUUID } from 'node:crypto';

export type CinderEventType =
  | 'backup.create.start'
  | 'backup.create.end'
  | 'backup.create.error'
  | 'backup.createprogress'
  | 'backup.delete.start'
  | 'backup.delete.end'
  | 'backup.delete.error'
  | 'backup.restore.start'
  | 'backup.restore.end'
  | 'backup.restore.error'
  | 'backup.restoreprogress'
  | 'backup.update'
  | 'backup.reset_status'
  | 'snapshot.create.start'
  | 'snapshot.create.end'
  | 'snapshot.create.error'
  | 'snapshot.delete.start'
  | 'snapshot.delete.end'
  | 'volume.create.start'
  | 'volume.create.end'
  | 'volume.delete.start'
  | 'volume.delete.end';

export type BlockgateEventType =
  | 'export.attach'
  | 'export.detach'
  | 'instant.start'
  | 'instant.progress'
  | 'instant.end'
  | 'gc.start'
  | 'gc.end'
  | 'verify.end'
  | 'prune.end'
  | 'node.up'
  | 'node.down';

export type EventType = CinderEventType | BlockgateEventType;

/** Cinder's notification payload, as far as we have the fields; extra keys are allowed. */
export interface EventPayload {
  backup_id?: string;
  volume_id?: string;
  snapshot_id?: string;
  project_id?: string;
  user_id?: string;
  status?: string;
  /** GiB, as Cinder reports a backup's size */
  size?: number;
  fail_reason?: string | null;
  percent?: number;
  bytes?: number;
  created_at?: string;
  [key: string]: unknown;
}

export interface BlockgateEvent {
  /** unique per event (a consumer drops duplicates by it) */
  id: string;
  type: EventType;
  /** ISO 8601, UTC */
  time: string;
  /** the node (daemon or CLI host) that emitted it */
  node: string;
  /** the resource the event is about (backup, volume or snapshot id; gc/verify: repository id) */
  resource: string;
  payload: EventPayload;
}

export interface EventSink {
  /** receives each event in order; must not throw (the bus counts a throw as a loss) */
  write(event: BlockgateEvent): void;
  /** flushes what it can and releases its resources */
  close(): Promise<void>;
}

export type EventListener = (event: BlockgateEvent) => void;

export class EventBus {
  private readonly sinks: EventSink[] = [];
  private readonly listeners = new Set<EventListener>();
  /** events a sink or listener threw on */
  failures = 0;

  constructor(
    readonly node: string,
    private readonly onFailure: (where: string, error: Error) => void = () => {},
  ) {}

  addSink(sink: EventSink): void {
    this.sinks.push(sink);
  }

  /** calls `fn` for every later event; returns the unsubscribe function */
  subscribe(fn: EventListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  emit(type: EventType, resource: string, payload: EventPayload = {}): BlockgateEvent {
    const event: BlockgateEvent = { id: randomUUID(), type, time: new Date().toISOString(), node: this.node, resource, payload };
    this.deliver(event);
    return event;
  }

  /** emits `type` about `resource` with `payload` (default: `result` itself) and returns `result`: one line at the end of an operation */
  tap<T extends object>(type: EventType, resource: string, result: T, payload?: EventPayload): T {
    this.emit(type, resource, payload ?? ({ ...result } as EventPayload));
    return result;
  }

  /** hands an event made elsewhere (another node's, read from Kafka) to the listeners only */
  relay(event: BlockgateEvent): void {
    for (const fn of this.listeners) this.guard('listener', () => fn(event));
  }

  private deliver(event: BlockgateEvent): void {
    for (const s of this.sinks) this.guard('sink', () => s.write(event));
    for (const fn of this.listeners) this.guard('listener', () => fn(event));
  }

  private guard(where: string, f: () => void): void {
    try {
      f();
    } catch (e) {
      this.failures++;
      this.onFailure(where, e as Error);
    }
  }

  async close(): Promise<void> {
    this.listeners.clear();
    for (const s of this.sinks.splice(0)) {
      try {
        await s.close();
      } catch (e) {
        this.failures++;
        this.onFailure('sink close', e as Error);
      }
    }
  }
}

/** a bus with no sinks, for code paths that have none configured */
export function nullBus(): EventBus {
  return new EventBus('local');
}
