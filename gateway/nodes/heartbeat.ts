/**
 * Node identity and heartbeats: each daemon of a cluster produces a heartbeat to the nodes
 * topic every `heartbeatMs` (key = node name) and reads everyone's; a node is `up` while its
 * last heartbeat is younger than `nodeTimeoutMs`. The table is the service list (`blockgate
 * service list`, Cinder's os-services), kept in `DATA_DIR/nodes.json` (0600) for the CLI, and
 * `node.up` / `node.down` events mark the changes. Without Kafka the table holds this node
 * alone. A heartbeat that is not one of ours is ignored with a log line.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Message, Producer } from 'node-rdkafka';
import type { EventBus } from '../events/bus.js';
import { baseConfig, rdkafka } from '../events/kafka-client.js';
import { safeDisconnect } from '../events/kafka.js';
import { type TopicTail, tailTopic } from './topic-tail.js';

export const NODES_FILE = 'nodes.json';

export interface Heartbeat {
  kind: 'blockgate-heartbeat';
  node: string;
  host: string;
  pid: number;
  started_at: string;
  /** ms since the epoch, the sender's clock (the receiver times out by its own clock) */
  sent: number;
  /** jobs it may run at once, and runs now */
  workers?: number;
  running?: number;
}

export interface NodeRow {
  node: string;
  host: string;
  pid: number;
  status: 'up' | 'down';
  started_at: string;
  last_heartbeat: string;
  running?: number;
  workers?: number;
}

export interface NodesFile {
  written_by: string;
  written_at: number;
  timeout_ms: number;
  nodes: (Omit<NodeRow, 'status'> & { seen: number })[];
}

export const instanceOf = (pid: number, startedAt: string): string => `${pid}@${startedAt}`;

export function parseHeartbeat(value: Buffer | null): Heartbeat | null {
  if (!value || value.length > 64 * 1024) return null;
  try {
    const h = JSON.parse(value.toString()) as Heartbeat;
    if (h?.kind !== 'blockgate-heartbeat' || typeof h.node !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(h.node)) return null;
    if (typeof h.host !== 'string' || !Number.isInteger(h.pid) || typeof h.started_at !== 'string') return null;
    return h;
  } catch {
    return null;
  }
}

export interface HeartbeatOptions {
  node: string;
  dataDir: string;
  kafka?: { brokers: string; topic: string; heartbeatMs: number; nodeTimeoutMs: number };
  bus: EventBus;
  load?: () => { workers: number; running: number };
  /** another node's heartbeat arrived (the service list of the API is fed from here) */
  onPeer?: (hb: Heartbeat) => void;
  log: (level: 'info' | 'warn', fields: Record<string, unknown>, msg: string) => void;
}

export class Heartbeats {
  private readonly seen = new Map<string, { hb: Heartbeat; at: number; up: boolean }>();
  private readonly startedAt = new Date().toISOString();
  private producer?: Producer;
  private tail?: TopicTail;
  private timer?: NodeJS.Timeout;
  private lastBadLog = 0;
  ignored = 0;

  constructor(private readonly opts: HeartbeatOptions) {
    this.load = opts.load;
  }
  /** what the heartbeat says about this node's jobs */
  load?: () => { workers: number; running: number };

  get timeoutMs(): number {
    return this.opts.kafka?.nodeTimeoutMs ?? 5000;
  }

  async start(): Promise<void> {
    const k = this.opts.kafka;
    if (k) {
      const Kafka = await rdkafka();
      const p = new Kafka.Producer({ ...baseConfig(k.brokers, `blockgate-${this.opts.node}-hb`), 'message.timeout.ms': k.nodeTimeoutMs, 'linger.ms': 0 } as never);
      p.setPollInterval(200);
      p.connect({ timeout: 5000 }, (err) => {
        if (!err) this.producer = p;
        else void safeDisconnect(p);
      });
      this.tail = await tailTopic(k.brokers, k.topic, `blockgate-${this.opts.node}-nodes`, (m) => this.received(m), (e) => this.opts.log('warn', { event: 'heartbeat-error', error: e.message }, `heartbeats: ${e.message}`));
    }
    this.beat();
    this.timer = setInterval(() => this.beat(), k?.heartbeatMs ?? 1000);
    this.timer.unref();
  }

  private mine(): Heartbeat {
    const load = this.load?.();
    return { kind: 'blockgate-heartbeat', node: this.opts.node, host: os.hostname(), pid: process.pid, started_at: this.startedAt, sent: Date.now(), ...(load ?? {}) };
  }

  private beat(): void {
    const hb = this.mine();
    this.note(hb);
    const k = this.opts.kafka;
    if (k && this.producer) {
      try {
        this.producer.produce(k.topic, null, Buffer.from(JSON.stringify(hb)), hb.node, hb.sent);
      } catch {
        /* a full local queue while the broker is away: the next beat tries again */
      }
    }
    this.check();
    this.save();
  }

  private received(m: Message): void {
    const hb = parseHeartbeat(m.value);
    if (!hb) {
      this.ignored++;
      if (Date.now() - this.lastBadLog > 10_000) {
        this.lastBadLog = Date.now();
        this.opts.log('warn', { event: 'heartbeat-ignored', partition: m.partition, offset: m.offset }, `ignored a message on the nodes topic that is not a blockgate heartbeat (${this.ignored} so far)`);
      }
      return;
    }
    if (hb.node === this.opts.node && hb.pid === process.pid) return;
    this.note(hb);
    try {
      this.opts.onPeer?.(hb);
    } catch (e) {
      this.opts.log('warn', { event: 'heartbeat-record-failed', error: (e as Error).message }, `cannot record the heartbeat of ${hb.node}: ${(e as Error).message}`);
    }
  }

  private note(hb: Heartbeat): void {
    const cur = this.seen.get(hb.node);
    // a restarted node (new pid or start) replaces the old entry; an older beat never does
    if (cur && cur.hb.started_at === hb.started_at && cur.hb.sent > hb.sent) return;
    this.seen.set(hb.node, { hb, at: Date.now(), up: cur?.up ?? false });
    this.check();
  }

  /** up/down transitions become node.up / node.down events */
  private check(): void {
    const now = Date.now();
    for (const [node, s] of this.seen) {
      const up = node === this.opts.node || now - s.at < this.timeoutMs;
      if (up === s.up) continue;
      s.up = up;
      this.opts.bus.emit(up ? 'node.up' : 'node.down', node, { node, host: s.hb.host, pid: s.hb.pid, status: up ? 'up' : 'down', last_heartbeat: new Date(s.at).toISOString() });
    }
  }

  /** the service list as this node sees it now */
  rows(): NodeRow[] {
    const now = Date.now();
    return [...this.seen.values()]
      .map(({ hb, at }) => ({ node: hb.node, host: hb.host, pid: hb.pid, status: (hb.node === this.opts.node || now - at < this.timeoutMs ? 'up' : 'down') as NodeRow['status'], started_at: hb.started_at, last_heartbeat: new Date(at).toISOString(), running: hb.running, workers: hb.workers }))
      .sort((a, b) => a.node.localeCompare(b.node));
  }

  /** names of the nodes that are up now */
  upNodes(): Set<string> {
    return new Set(this.rows().filter((r) => r.status === 'up').map((r) => r.node));
  }

  /** this process as an instance of its node (what its job claims carry) */
  get instance(): string {
    return instanceOf(process.pid, this.startedAt);
  }

  /** the node is up now, and (when given) as that instance: a restarted node's old instance is dead */
  alive(node: string, instance?: string): boolean {
    if (node === this.opts.node) return !instance || instance === this.instance;
    const s = this.seen.get(node);
    if (!s || Date.now() - s.at >= this.timeoutMs) return false;
    return !instance || instance === instanceOf(s.hb.pid, s.hb.started_at);
  }

  private save(): void {
    const file = path.join(this.opts.dataDir, NODES_FILE);
    const body: NodesFile = { written_by: this.opts.node, written_at: Date.now(), timeout_ms: this.timeoutMs, nodes: [...this.seen.values()].map(({ hb, at }) => ({ node: hb.node, host: hb.host, pid: hb.pid, started_at: hb.started_at, last_heartbeat: new Date(at).toISOString(), seen: at, running: hb.running, workers: hb.workers })) };
    const tmp = `${file}.${process.pid}.tmp`;
    try {
      fs.writeFileSync(tmp, JSON.stringify(body), { mode: 0o600 });
      fs.renameSync(tmp, file);
    } catch (e) {
      this.opts.log('warn', { event: 'nodes-file-failed', error: (e as Error).message }, `cannot write ${file}: ${(e as Error).message}`);
    }
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.tail?.close();
    const p = this.producer;
    this.producer = undefined;
    if (p) await safeDisconnect(p, 500);
    // this node is down from now on, whoever reads the file
    const s = this.seen.get(this.opts.node);
    if (s) s.at = 0;
    this.save();
  }
}

/** the service list from the data dir's nodes.json, as of now (a daemon that stopped writing it shows down) */
export function readServiceList(dataDir: string, localNode: string): NodeRow[] {
  let f: NodesFile | undefined;
  try {
    f = JSON.parse(fs.readFileSync(path.join(dataDir, NODES_FILE), 'utf8')) as NodesFile;
  } catch {
    /* no daemon ever ran here */
  }
  localNode = f?.written_by ?? localNode;
  const now = Date.now();
  const timeout = f?.timeout_ms ?? 5000;
  const fresh = !!f && now - f.written_at < timeout;
  const rows: NodeRow[] = (f?.nodes ?? []).map(({ seen, ...n }) => ({ ...n, status: fresh && now - seen < timeout ? 'up' : 'down' }));
  if (!rows.some((r) => r.node === localNode)) rows.push({ node: localNode, host: os.hostname(), pid: 0, status: 'down', started_at: '', last_heartbeat: '' });
  return rows.sort((a, b) => a.node.localeCompare(b.node));
}
