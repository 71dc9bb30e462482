/**
 * The appliance context: one open catalog, repository and worker pool for a data
 * directory, shared by the engine, the CLI and the daemon.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Catalog } from '../catalog/catalog.js';
import { Repository } from '../drivers/repository.js';
import { DirStore } from '../drivers/store/dir.js';
import type { ObjectStore } from '../drivers/store/types.js';
import { ChunkWorkerPool } from '../drivers/workers/pool.js';
import { CachedChunkReader, RepoChunkReader } from './read/chunk-reader.js';
import { FileVolume } from '../drivers/volume/file.js';
import { RbdVolume } from '../drivers/volume/rbd.js';
import type { VolumeDriver } from '../drivers/volume/types.js';
import type { BackupRecord, VolumeRecord } from '../catalog/records.js';
import os from 'node:os';
import { EventBus } from './events/bus.js';
import { JobStore } from '../catalog/jobs.js';
import { EVENTS_DIR, EventLog } from './events/log.js';
import { KafkaSink, type KafkaSinkOptions } from './events/kafka.js';
import { followRepository } from './engine/follow.js';
import { followPacks } from './engine/repack.js';
import { repoSecrets, s3StoreOptions } from './repo-secrets.js';
import { type ApplianceConfig, type RepoDriverConfig, type S3RepoConfig, loadConfig } from './config.js';

export type StoreFactory = (cfg: RepoDriverConfig) => Promise<ObjectStore>;
const storeFactories: Record<string, StoreFactory> = {
  dir: async (cfg) => new DirStore((cfg as { path: string }).path),
  // S3 (issue 6): loaded on first use; retries long enough to ride out an endpoint restart
  s3: async (cfg) => (await import('../drivers/store/s3.js')).S3Store.open({ maxAttempts: 8, retryBaseDelayMs: 200, retryMaxDelayMs: 10_000, ...s3StoreOptions(cfg as S3RepoConfig) }),
};
/** lets a driver module (S3) register itself without the core importing it */
export function registerStoreDriver(name: string, f: StoreFactory): void {
  storeFactories[name] = f;
}

export async function openStore(cfg: RepoDriverConfig): Promise<ObjectStore> {
  const f = storeFactories[cfg.driver];
  if (!f) throw new Error(`unknown repository driver "${cfg.driver}"`);
  return f(cfg);
}

export type VolumeDriverFactory = (v: VolumeRecord, config: ApplianceConfig) => VolumeDriver;
const volumeFactories: Record<string, VolumeDriverFactory> = {
  file: (v) => new FileVolume(v.path),
  rbd: (v, config) => new RbdVolume(v.path, { conf: v.ceph_conf, user: v.ceph_user ?? config.cephUser }),
};
export function registerVolumeDriver(name: string, f: VolumeDriverFactory): void {
  volumeFactories[name] = f;
}

export class Appliance {
  private poolInstance?: ChunkWorkerPool;
  /** every event of this process (jobs, exports, GC, verify); sinks are added from the config */
  readonly events: EventBus;
  /** the embedded event log of the data dir (the default sink, and what Kafka ships from) */
  readonly eventLog: EventLog;
  /** set when this process ships the event log to Kafka (the daemon, with `kafka` configured) */
  kafkaSink?: KafkaSink;
  /** events rotated out of the log before Kafka got them (counted here, logged at most every 10 s) */
  eventsLost = 0;

  private constructor(
    readonly config: ApplianceConfig,
    readonly catalog: Catalog,
    readonly repo: Repository,
  ) {
    let lossLogged = 0;
    const warn = (fields: Record<string, unknown>, msg: string) => process.stderr.write(`${JSON.stringify({ level: 40, time: Date.now(), ...fields, msg })}\n`);
    this.events = new EventBus(config.node ?? os.hostname(), (where, e) => warn({ event: 'event-sink-failed', where, error: e.message }, `event ${where} failed: ${e.message}`));
    this.eventLog = new EventLog(path.join(config.dataDir, EVENTS_DIR), {
      maxBytes: config.events.maxBytes,
      onLoss: (segment, lines) => {
        this.eventsLost += lines;
        if (Date.now() - lossLogged < 10_000) return;
        lossLogged = Date.now();
        warn({ event: 'events-lost', segment, lines, total: this.eventsLost }, `the event log is full and Kafka is not taking events: ${this.eventsLost} events rotated out before they were sent (raise events.maxBytes or bring the broker back)`);
      },
    });
    this.events.addSink(this.eventLog);
  }

  /**
   * Ships the event log to Kafka when `kafka` is configured (the daemon does; a CLI process
   * only appends to the log, which the daemon ships). Never waits for the broker.
   */
  shipEvents(log?: KafkaSinkOptions['log']): KafkaSink | undefined {
    const k = this.config.kafka;
    if (!k || this.kafkaSink) return this.kafkaSink;
    this.kafkaSink = new KafkaSink(this.eventLog.dir, { brokers: k.brokers, topic: k.eventsTopic, clientId: `blockgate-${this.events.node}`, maxInFlight: k.maxInFlight, startAt: this.eventLog.end(), log });
    this.events.addSink(this.kafkaSink);
    return this.kafkaSink;
  }

  static async open(dataDirOrConfig?: string | ApplianceConfig): Promise<Appliance> {
    const config = typeof dataDirOrConfig === 'object' ? dataDirOrConfig : loadConfig(dataDirOrConfig);
    fs.mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
    const store = await openStore(config.repository);
    let repo: Repository;
    try {
      repo = await Repository.openOrCreate(store, { chunkSize: config.chunkSize, codec: config.codec, packSize: config.packSize }, repoSecrets(config));
    } catch (e) {
      await store.close?.();
      throw e;
    }
    const catalog = new Catalog(path.join(config.dataDir, 'catalog'));
    let settled: BackupRecord[] = [];
    try {
      catalog.bindRepository(repo.config.id, store.location);
      settled = catalog.recoverInterrupted();
    } catch (e) {
      await catalog.close();
      throw e;
    }
    const app = new Appliance(config, catalog, repo);
    repo.locator = (kind, d) => {
      if (kind === 'pages') {
        const l = catalog.pageLocs.get(d);
        return l ? { pack: l.p, offset: l.o, length: l.s } : null;
      }
      const c = catalog.chunks.get(d);
      return c?.p ? { pack: c.p, offset: c.o ?? 0, length: c.s, plain: c.n } : null;
    };
    repo.relocator = async () => {
      await followPacks(app);
    };
    try {
      // a backup whose process died before its commit may have left its manifest: it names nothing committed
      // (not one another node of the cluster ran for this one: its manifest, if any, is committed)
      const elsewhere = new Set(new JobStore(catalog.env).active().filter((j) => j.params?.cluster).map((j) => j.backup_id));
      for (const b of settled) if (b.status === 'error' && !elsewhere.has(b.id)) await repo.deleteManifest(b.id);
      // other appliances sharing the repository may have deleted backups and collected garbage
      await followRepository(app);
    } catch (e) {
      await app.close();
      throw e;
    }
    return app;
  }

  get pool(): ChunkWorkerPool {
    this.poolInstance ??= new ChunkWorkerPool(this.config.workers, undefined, this.repo.keys);
    return this.poolInstance;
  }

  private chunksInstance?: CachedChunkReader;
  /**
   * The chunk cache of this process (at most `cacheBytes`), over the repository: NBD exports,
   * FUSE, instant restore and a backup's reads of its parent's chunks share it.
   */
  get chunks(): CachedChunkReader {
    this.chunksInstance ??= new CachedChunkReader(new RepoChunkReader(this.repo, this.pool), this.config.cacheBytes);
    return this.chunksInstance;
  }

  volumeDriver(v: VolumeRecord): VolumeDriver {
    const f = volumeFactories[v.driver];
    if (!f) throw new Error(`volume ${v.name} uses driver "${v.driver}", which this appliance does not have`);
    return f(v, this.config);
  }

  get volumesDir(): string {
    return path.join(this.config.dataDir, 'volumes');
  }

  async close(): Promise<void> {
    await this.events.close();
    await this.poolInstance?.close();
    await this.repo.store.close?.();
    await this.catalog.close();
  }
}
