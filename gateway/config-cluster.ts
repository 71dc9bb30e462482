/**
 * The `kafka`, `node` and `events` sections of blockgate.json: their types, defaults and
 * checks (read by gateway/config.ts, the one place that reads the file and the environment).
 */
import path from 'node:path';
import { checkName } from './names.js';
import { inFile, wholeNumber } from './config-values.js';

/** `kafka` in blockgate.json */
export interface KafkaConfig {
  /** bootstrap servers, "host:port,host:port" */
  brokers: string;
  /** where events go (default blockgate.events) */
  eventsTopic: string;
  /** the nodes' shared job queue (default blockgate.jobs) */
  jobsTopic: string;
  /** node heartbeats (default blockgate.nodes) */
  nodesTopic: string;
  /** events handed to the producer and not yet acknowledged (default 10000; the rest waits in the event log) */
  maxInFlight: number;
  /** a node heartbeats this often (default 1000 ms) ... */
  heartbeatMs: number;
  /** ... and is down after this long without one (default 5000 ms) */
  nodeTimeoutMs: number;
  /** directories every node reaches at the same path (NFS): backups of file volumes there run on any node */
  sharedPaths: string[];
}

/** `events` in blockgate.json: bounds of the embedded event log */
export interface EventsConfig {
  /** all segments together (default 64M) */
  maxBytes: number;
}

const KAFKA_KEYS = ['brokers', 'eventsTopic', 'jobsTopic', 'nodesTopic', 'maxInFlight', 'heartbeatMs', 'nodeTimeoutMs', 'sharedPaths'];
const TOPIC_RE = /^[A-Za-z0-9._-]{1,249}$/;
const BROKER_RE = /^[A-Za-z0-9.-]+:\d{1,5}$|^\[[0-9A-Fa-f:.]+\]:\d{1,5}$/;

/** `kafka`, `node` and `events` of blockgate.json, checked; errors name the file and the key */
export function validateEventsAndNodes(raw: Record<string, unknown>, where: string): { node?: string; kafka?: KafkaConfig; events: EventsConfig } {
  const obj = (k: string): Record<string, unknown> | undefined => {
    const v = raw[k];
    if (v === undefined) return undefined;
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error(`${where}: ${k} must be an object`);
    return v as Record<string, unknown>;
  };
  const int = (r: Record<string, unknown>, key: string, def: number, min: number, max: number, size = false): number => {
    const v = r[key.split('.').pop()!];
    return v === undefined ? def : inFile(where, () => wholeNumber(v, key, min, max, size));
  };
  let node: string | undefined;
  if (raw.node !== undefined) {
    try {
      node = checkName('node', raw.node);
    } catch (e) {
      throw new Error(`${where}: ${(e as Error).message}`);
    }
  }
  const ev = obj('events') ?? {};
  for (const k of Object.keys(ev)) if (k !== 'maxBytes') throw new Error(`${where}: unknown key events.${k} (known: maxBytes)`);
  const events: EventsConfig = { maxBytes: int(ev, 'events.maxBytes', 64 * 1024 * 1024, 64 * 1024, 2 ** 40, true) };
  const k = obj('kafka');
  if (!k) return { node, events };
  for (const key of Object.keys(k)) if (!KAFKA_KEYS.includes(key)) throw new Error(`${where}: unknown key kafka.${key} (known: ${KAFKA_KEYS.join(', ')})`);
  const brokers = Array.isArray(k.brokers) ? k.brokers.join(',') : k.brokers;
  if (typeof brokers !== 'string' || !brokers.split(',').every((b) => BROKER_RE.test(b.trim()))) throw new Error(`${where}: kafka.brokers must be "host:port" or a list of them`);
  const topic = (key: string, def: string): string => {
    const v = k[key] ?? def;
    if (typeof v !== 'string' || !TOPIC_RE.test(v)) throw new Error(`${where}: kafka.${key} must be a topic name (letters, digits, '.', '_', '-')`);
    return v;
  };
  const heartbeatMs = int(k, 'kafka.heartbeatMs', 1000, 100, 60_000);
  const kafka: KafkaConfig = {
    brokers: brokers.split(',').map((b) => b.trim()).join(','),
    eventsTopic: topic('eventsTopic', 'blockgate.events'),
    jobsTopic: topic('jobsTopic', 'blockgate.jobs'),
    nodesTopic: topic('nodesTopic', 'blockgate.nodes'),
    maxInFlight: int(k, 'kafka.maxInFlight', 10_000, 1, 1_000_000),
    heartbeatMs,
    nodeTimeoutMs: int(k, 'kafka.nodeTimeoutMs', 5000, 2 * heartbeatMs, 600_000),
    sharedPaths: [],
  };
  if (k.sharedPaths !== undefined) {
    if (!Array.isArray(k.sharedPaths) || !k.sharedPaths.every((p) => typeof p === 'string' && path.isAbsolute(p) && !p.split('/').includes('..'))) throw new Error(`${where}: kafka.sharedPaths must be a list of absolute directories`);
    kafka.sharedPaths = k.sharedPaths.map((p) => path.resolve(p as string));
  }
  return { node, kafka, events };
}
