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
  /** decompressed-chunk cache of the read path, bytes */
  cacheBytes: number;
  /** chunks in flight per backup or restore */
  pipelineDepth: number;
  /** worker threads for hashing and compression (default: number of cores) */
  workers?: number;
  nbd: { host: string; port: number; socket: string };
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
    nbd: { host: '127.0.0.1', port: 10809, socket: path.join(dataDir, 'nbd.sock') },
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
  const cfg: ApplianceConfig = { ...base, ...fromFile, dataDir, nbd: { ...base.nbd, ...(fromFile.nbd ?? {}) } };
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
