/**
 * Appliance configuration: the data directory and what lives in it. Defaults are the
 * embedded ones (LMDB catalog and a directory repository under the data directory); a
 * `blockgate.json` in the data directory, or environment variables, choose otherwise.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { DEFAULT_CHUNK } from '../drivers/chunk.js';
import type { CodecName } from '../drivers/codec.js';
import type { S3StoreOptions } from '../drivers/store/s3.js';
import { type NbdAccessRule, validateRule } from './exports/access.js';
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
    let v = r[k];
    if (v === undefined) return undefined;
    if (size && typeof v === 'string') {
      try {
        v = parseSize(v);
      } catch (e) {
        throw new Error(`${where}: nbd.${k}: ${(e as Error).message}`);
      }
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new Error(`${where}: nbd.${k} must be a whole number from ${min} to ${max}${size ? ' (or a size such as "64M")' : ''}`);
    return v;
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
  const cfg: ApplianceConfig = { ...base, ...fromFile, dataDir, nbd: validateNbd(fromFile.nbd, base.nbd, dataDir, file) };
  const env = process.env;
  if (env.BLOCKGATE_CACHE_BYTES) cfg.cacheBytes = Number(env.BLOCKGATE_CACHE_BYTES);
  if (env.BLOCKGATE_NBD_PORT) cfg.nbd.port = Number(env.BLOCKGATE_NBD_PORT);
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
