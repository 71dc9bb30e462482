/**
 * Appliance configuration: the data directory and what lives in it. Defaults are the
 * embedded ones (LMDB catalog and a directory repository under the data directory); a
 * `blockgate.json` in the data directory, or environment variables, choose otherwise.
 * Every file key and environment variable is read here; the schemas of the `nbd` section
 * (config-nbd.ts) and of `kafka`, `node` and `events` (config-cluster.ts) are siblings.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { DEFAULT_CHUNK, checkChunkSize } from '../drivers/chunk.js';
import { type CodecName, parseCodec } from '../drivers/codec.js';
import { checkPackSize } from '../drivers/pack.js';
import type { S3StoreOptions } from '../drivers/store/s3.js';
import { wholeNumber } from './config-values.js';
import { type EventsConfig, type KafkaConfig, validateEventsAndNodes } from './config-cluster.js';
import { type NbdConfig, validateNbd } from './config-nbd.js';

export { type EventsConfig, type KafkaConfig, validateEventsAndNodes } from './config-cluster.js';
export { type NbdConfig, validateNbd } from './config-nbd.js';

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
 * which keeps the secret out of the config object; the AWS_* variables of an S3 repository
 * there too, by s3StoreOptions, when the repository is opened.)
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
