/**
 * Appliance configuration: the data directory and what lives in it. Defaults are the
 * embedded ones (LMDB catalog and a directory repository under the data directory); a
 * `blockgate.json` in the data directory, or environment variables, choose otherwise.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { DEFAULT_CHUNK, checkChunkSize } from '../drivers/chunk.js';
import { type CodecName, parseCodec } from '../drivers/codec.js';
import { checkPackSize } from '../drivers/pack.js';
import type { S3StoreOptions } from '../drivers/store/s3.js';
import { type NbdAccessRule, validateRule } from './exports/access.js';
import { checkName } from './names.js';
import { parseSize } from './size.js';

export interface DirRepoConfig {
  driver: 'dir';
  path: string;
}
/** the S3 driver's own options (type only: the SDK is loaded when an S3 repository is opened) */
export type S3RepoConfig = { driver: 's3' } & Pick<S3StoreOptions, 'bucket' | 'prefix' | 'endpoint' | 'region' | 'accessKeyId' | 'secretAccessKey' | 'concurrency'>;
export type RepoDriverConfig = DirRepoConfig | S3RepoConfig;

export interface ApplianceConfig {
  dataDir: string;
  repository: RepoDriverConfig;
  /** used when the repository is created */
  chunkSize: number;
  codec: CodecName;
  /** used when the repository is created: pack size of a packed repository (0: one object per chunk) */
  packSize?: number;
  /** decompressed-chunk cache of the read path, bytes */
  cacheBytes: number;
  /** chunks in flight per backup or restore */
  pipelineDepth: number;
  /** worker threads for hashing and compression (default: number of cores) */
  workers?: number;
  nbd: NbdConfig;
  /**
   * an encrypted repository: where its key comes from (paths; the passphrase itself may also
   * come from BLOCKGATE_PASSPHRASE). Set by `repo create --encrypt`; with it, a plain
   * repository is refused.
   */
  encryption?: { keyFile?: string; passphraseFile?: string };
  /** this daemon's name in a cluster of nodes (`serve --node NAME`; default the host name) */
  node?: string;
  /** Kafka: events to a topic, and (with several nodes) the shared job queue; absent = embedded only */
  kafka?: KafkaConfig;
  /** the embedded event log */
  events: EventsConfig;
  /** instant-restore sessions: how they copy and commit */
  instant: InstantConfig;
  /** pino level of the daemon's log (BLOCKGATE_LOG_LEVEL) */
  logLevel: LogLevel;
  /** ceph user for RBD volumes registered without one (BLOCKGATE_CEPH_USER) */
  cephUser?: string;
}

/** `"instant": { "concurrency": 6, "rate": 0, "syncIntervalMs": 1000, "syncBlocks": 256 }` in blockgate.json */
export interface InstantConfig {
  /** parallel block copies per session (default: pipelineDepth) */
  concurrency: number;
  /** bytes/s per session, 0 = unlimited */
  rate: number;
  /** commit copied blocks at least this often */
  syncIntervalMs: number;
  /** ...or every this many blocks */
  syncBlocks: number;
}

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** a whole number in [min, max], or a size ("64M") where `size`; `where` names the key in errors */
function wholeNumber(v: unknown, key: string, min: number, max: number, size = false): number {
  if (size && typeof v === 'string') {
    try {
      v = parseSize(v);
    } catch (e) {
      throw new Error(`${key}: ${(e as Error).message}`);
    }
  }
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new Error(`${key} must be a whole number from ${min} to ${max}${size ? ' (or a size such as "64M")' : ''}, not ${JSON.stringify(v)}`);
  return v;
}

/** runs a check, prefixing its error with the file it read */
function inFile<T>(where: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw new Error(`${where}: ${(e as Error).message}`);
  }
}

/**
 * The top-level keys of blockgate.json and the instant section, checked over their defaults;
 * errors name the file and the key. Sections with their own validators (nbd, kafka, events,
 * node) and those other modules own are passed through.
 */
function validateCore(raw: Record<string, unknown>, base: ApplianceConfig, where: string): Partial<ApplianceConfig> {
  const out: Partial<ApplianceConfig> = {};
  const at = (k: string) => `${where}: ${k}`;
  try {
    if (raw.chunkSize !== undefined) out.chunkSize = checkChunkSize(wholeNumber(raw.chunkSize, 'chunkSize', 1, 2 ** 31, true));
    if (raw.codec !== undefined) out.codec = parseCodec(String(raw.codec));
    if (raw.packSize !== undefined) out.packSize = raw.packSize === 0 ? 0 : checkPackSize(wholeNumber(raw.packSize, 'packSize', 1, 2 ** 30, true));
    if (raw.cacheBytes !== undefined) out.cacheBytes = wholeNumber(raw.cacheBytes, 'cacheBytes', 0, 2 ** 44, true);
    if (raw.pipelineDepth !== undefined) out.pipelineDepth = wholeNumber(raw.pipelineDepth, 'pipelineDepth', 1, 1024);
    if (raw.workers !== undefined) out.workers = wholeNumber(raw.workers, 'workers', 1, 256);
    if (raw.logLevel !== undefined) out.logLevel = logLevel(raw.logLevel, 'logLevel');
  } catch (e) {
    throw new Error(`${where}: ${(e as Error).message}`);
  }
  if (raw.repository !== undefined) {
    const r = raw.repository as Record<string, unknown>;
    if (!r || typeof r !== 'object' || Array.isArray(r)) throw new Error(`${at('repository')} must be an object {"driver": "dir"|"s3", ...}`);
    if (r.driver === 'dir') {
      if (typeof r.path !== 'string' || r.path === '' || r.path.includes('\0')) throw new Error(`${at('repository.path')} must be a directory name`);
    } else if (r.driver === 's3') {
      if (typeof r.bucket !== 'string') throw new Error(`${at('repository.bucket')} must be a bucket name`);
    } else if (typeof r.driver !== 'string' || !/^[a-z][a-z0-9-]{0,31}$/.test(r.driver)) {
      // other drivers register themselves (registerStoreDriver); an unknown one is refused when opened
      throw new Error(`${at('repository.driver')} must be a driver name such as "dir" or "s3", not ${JSON.stringify(r.driver)}`);
    }
  }
  const i = raw.instant;
  if (i !== undefined) {
    if (!i || typeof i !== 'object' || Array.isArray(i)) throw new Error(`${at('instant')} must be an object`);
    const known = ['concurrency', 'rate', 'syncIntervalMs', 'syncBlocks'];
    const r = i as Record<string, unknown>;
    for (const k of Object.keys(r)) if (!known.includes(k)) throw new Error(`${where}: unknown key instant.${k} (known: ${known.join(', ')})`);
    try {
      out.instant = {
        concurrency: r.concurrency === undefined ? base.instant.concurrency : wholeNumber(r.concurrency, 'instant.concurrency', 1, 1024),
        rate: r.rate === undefined ? base.instant.rate : wholeNumber(r.rate, 'instant.rate', 0, 2 ** 44, true),
        syncIntervalMs: r.syncIntervalMs === undefined ? base.instant.syncIntervalMs : wholeNumber(r.syncIntervalMs, 'instant.syncIntervalMs', 10, 3_600_000),
        syncBlocks: r.syncBlocks === undefined ? base.instant.syncBlocks : wholeNumber(r.syncBlocks, 'instant.syncBlocks', 1, 1 << 24),
      };
    } catch (e) {
      throw new Error(`${where}: ${(e as Error).message}`);
    }
  }
  return out;
}

function logLevel(v: unknown, key: string): LogLevel {
  if (typeof v === 'string' && (LOG_LEVELS as readonly string[]).includes(v)) return v as LogLevel;
  throw new Error(`${key} must be one of ${LOG_LEVELS.join(', ')}, not ${JSON.stringify(v)}`);
}

/**
 * The environment variables the appliance reads, all of them here, each checked:
 * BLOCKGATE_CACHE_BYTES (a size), BLOCKGATE_NBD_PORT, BLOCKGATE_LOG_LEVEL, BLOCKGATE_CEPH_USER.
 * (BLOCKGATE_DATA_DIR is read by defaultDataDir; BLOCKGATE_PASSPHRASE by gateway/repo-secrets.ts,
 * which keeps the secret out of the config object; the AWS_* variables by the S3 SDK's
 * standard credential chain in drivers/store/s3.ts.)
 */
function fromEnvironment(env: NodeJS.ProcessEnv, cfg: ApplianceConfig): void {
  const v = (k: string) => (env[k] === undefined || env[k] === '' ? undefined : env[k]);
  try {
    const cache = v('BLOCKGATE_CACHE_BYTES');
    if (cache !== undefined) cfg.cacheBytes = wholeNumber(/^\d+$/.test(cache) ? Number(cache) : cache, 'BLOCKGATE_CACHE_BYTES', 0, 2 ** 44, true);
    const port = v('BLOCKGATE_NBD_PORT');
    if (port !== undefined) cfg.nbd = { ...cfg.nbd, port: wholeNumber(/^\d+$/.test(port) ? Number(port) : port, 'BLOCKGATE_NBD_PORT', 0, 65535) };
    const level = v('BLOCKGATE_LOG_LEVEL');
    if (level !== undefined) cfg.logLevel = logLevel(level, 'BLOCKGATE_LOG_LEVEL');
    const user = v('BLOCKGATE_CEPH_USER');
    if (user !== undefined) cfg.cephUser = user;
  } catch (e) {
    throw new Error(`environment: ${(e as Error).message}`);
  }
}

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
export function validateEventsAndNodes(raw: Record<string, unknown>, where: string): Pick<ApplianceConfig, 'node' | 'kafka' | 'events'> {
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

/** `nbd` in blockgate.json: where the daemon listens, TLS, who sees what, and its bounds. */
export interface NbdConfig {
  host: string;
  port: number;
  /** unix socket path ('' for none) */
  socket: string;
  /** x509 for NBD TLS (paths, relative to the data dir); `ca` verifies client certificates */
  tls?: { cert: string; key: string; ca?: string; required?: boolean };
  /** client certificate identity -> exports it may list, open and (write) write; see gateway/exports/access.ts */
  access: NbdAccessRule[];
  /** open NBD connections over all listeners; more are refused */
  maxConnections: number;
  /** requests served concurrently per connection */
  maxInFlightRequests: number;
  /** payload bytes (reads until sent, writes, CACHE windows) held per connection */
  maxInFlightBytes: number;
  /** the same over all connections together */
  maxTotalInFlightBytes: number;
}

const NBD_KEYS = ['host', 'port', 'socket', 'tls', 'access', 'maxConnections', 'maxInFlightRequests', 'maxInFlightBytes', 'maxTotalInFlightBytes'];

/** The `nbd` section over its defaults, every field checked; errors name the file and the field. */
export function validateNbd(raw: unknown, base: NbdConfig, dataDir: string, where: string): NbdConfig {
  if (raw === undefined) return base;
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${where}: nbd must be an object`);
  const r = raw as Record<string, unknown>;
  for (const k of Object.keys(r)) if (!NBD_KEYS.includes(k)) throw new Error(`${where}: unknown key nbd.${k} (known: ${NBD_KEYS.join(', ')})`);
  const out: NbdConfig = { ...base, access: [...base.access] };
  const str = (k: string): string | undefined => {
    const v = r[k];
    if (v === undefined) return undefined;
    if (typeof v !== 'string') throw new Error(`${where}: nbd.${k} must be a string`);
    return v;
  };
  const int = (k: string, min: number, max: number, size = false): number | undefined => {
    const v = r[k];
    return v === undefined ? undefined : inFile(where, () => wholeNumber(v, `nbd.${k}`, min, max, size));
  };
  out.host = str('host') ?? out.host;
  out.socket = str('socket') ?? out.socket;
  out.port = int('port', 0, 65535) ?? out.port;
  out.maxConnections = int('maxConnections', 1, 65536) ?? out.maxConnections;
  out.maxInFlightRequests = int('maxInFlightRequests', 1, 1024) ?? out.maxInFlightRequests;
  out.maxInFlightBytes = int('maxInFlightBytes', 1024 * 1024, 2 ** 40, true) ?? out.maxInFlightBytes;
  out.maxTotalInFlightBytes = int('maxTotalInFlightBytes', out.maxInFlightBytes, 2 ** 42, true) ?? Math.max(out.maxTotalInFlightBytes, out.maxInFlightBytes);
  if (r.tls !== undefined) {
    const t = r.tls as Record<string, unknown>;
    if (!t || typeof t !== 'object' || Array.isArray(t)) throw new Error(`${where}: nbd.tls must be an object {"cert": FILE, "key": FILE, "ca": FILE, "required": true}`);
    for (const k of Object.keys(t)) if (!['cert', 'key', 'ca', 'required'].includes(k)) throw new Error(`${where}: unknown key nbd.tls.${k} (cert, key, ca, required)`);
    for (const k of ['cert', 'key', 'ca']) if (t[k] !== undefined && (typeof t[k] !== 'string' || t[k] === '')) throw new Error(`${where}: nbd.tls.${k} must be a file name`);
    if (typeof t.cert !== 'string' || typeof t.key !== 'string') throw new Error(`${where}: nbd.tls needs cert and key`);
    if (t.required !== undefined && typeof t.required !== 'boolean') throw new Error(`${where}: nbd.tls.required must be true or false`);
    const abs = (f: string) => path.resolve(dataDir, f);
    out.tls = { cert: abs(t.cert), key: abs(t.key), ...(typeof t.ca === 'string' ? { ca: abs(t.ca) } : {}), ...(t.required !== undefined ? { required: t.required as boolean } : {}) };
  }
  if (r.access !== undefined) {
    if (!Array.isArray(r.access)) throw new Error(`${where}: nbd.access must be a list of {"identity": "CN=...", "exports": ["db1@*"], "write": false}`);
    try {
      out.access = r.access.map((x, i) => validateRule(x, `nbd.access[${i}]`));
    } catch (e) {
      throw new Error(`${where}: ${(e as Error).message}`);
    }
  }
  return out;
}

export const CONFIG_FILE = 'blockgate.json';

export function defaultDataDir(): string {
  return path.resolve(process.env.BLOCKGATE_DATA_DIR || './blockgate-data');
}

export function loadConfig(dataDir = defaultDataDir()): ApplianceConfig {
  dataDir = path.resolve(dataDir);
  const base: ApplianceConfig = {
    dataDir,
    repository: { driver: 'dir', path: path.join(dataDir, 'repo') },
    chunkSize: DEFAULT_CHUNK,
    codec: 'zstd',
    cacheBytes: 128 * 1024 * 1024,
    pipelineDepth: 6,
    events: { maxBytes: 64 * 1024 * 1024 },
    instant: { concurrency: 6, rate: 0, syncIntervalMs: 1000, syncBlocks: 256 },
    logLevel: 'info',
    nbd: {
      host: '127.0.0.1',
      port: 10809,
      socket: path.join(dataDir, 'nbd.sock'),
      access: [],
      maxConnections: 256,
      maxInFlightRequests: 64,
      maxInFlightBytes: 32 * 1024 * 1024,
      maxTotalInFlightBytes: 256 * 1024 * 1024,
    },
  };
  const file = path.join(dataDir, CONFIG_FILE);
  let fromFile: Partial<ApplianceConfig> = {};
  if (fs.existsSync(file)) {
    try {
      fromFile = JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<ApplianceConfig>;
    } catch (e) {
      throw new Error(`cannot read ${file}: ${(e as Error).message}`);
    }
  }
  if (!fromFile || typeof fromFile !== 'object' || Array.isArray(fromFile)) throw new Error(`${file} must hold a JSON object`);
  const raw = fromFile as Record<string, unknown>;
  // instant.concurrency follows pipelineDepth unless set
  if (typeof raw.pipelineDepth === 'number') base.instant.concurrency = Math.max(1, Math.floor(raw.pipelineDepth));
  const cfg: ApplianceConfig = { ...base, ...fromFile, dataDir, ...validateCore(raw, base, file), nbd: validateNbd(fromFile.nbd, base.nbd, dataDir, file), ...validateEventsAndNodes(raw, file) };
  fromEnvironment(process.env, cfg);
  if (cfg.repository.driver === 'dir' && !path.isAbsolute(cfg.repository.path)) {
    cfg.repository = { ...cfg.repository, path: path.resolve(dataDir, cfg.repository.path) };
  }
  return cfg;
}

/**
 * Writes `keys` of cfg into the data dir's blockgate.json. The file may hold S3 keys: it is
 * 0600, and replaced atomically (a temp file created exclusively, never through a symlink,
 * fsynced, renamed over it), so a crash leaves the old file or the new one, never half.
 */
export function saveConfig(cfg: ApplianceConfig, keys: (keyof ApplianceConfig)[]): void {
  const file = path.join(cfg.dataDir, CONFIG_FILE);
  const cur = fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>) : {};
  for (const k of keys) cur[k] = cfg[k];
  fs.mkdirSync(cfg.dataDir, { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
  const fd = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
  try {
    try {
      fs.fchmodSync(fd, 0o600);
      fs.writeFileSync(fd, JSON.stringify(cur, null, 2) + '\n');
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  const dfd = fs.openSync(cfg.dataDir, 'r');
  try {
    fs.fsyncSync(dfd);
  } finally {
    fs.closeSync(dfd);
  }
}
