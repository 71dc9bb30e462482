/**
 * Each node's catalog follows the shared repository, which stays the truth: every `pollMs`
 * (and at once when another node's backup.* event arrives over Kafka) the node lists the
 * manifests, adopts the backups it does not have — each new one alone (engine/rebuild.ts
 * adoptBackup: record, pages, its chunks' index entries, volume), or by a full rebuild when
 * it is far behind — and marks `deleted` the available ones whose manifest is gone; a new GC
 * epoch is followed as at open (engine/follow.ts). Other nodes' events are relayed to this
 * node's bus subscribers (never into its own log, which would ship them again).
 */
import type { Message } from 'node-rdkafka';
import { now } from '../../catalog/records.js';
import type { Appliance } from '../appliance.js';
import type { BlockgateEvent } from '../events/bus.js';
import { followRepository } from '../engine/follow.js';
import { adoptBackup, rebuildCatalog } from '../engine/rebuild.js';

/** more new manifests than this at once: a full rebuild (one listing of the repository) instead of one adoption each */
const REBUILD_PAST = 64;
import { type TopicTail, tailTopic } from './topic-tail.js';

export interface FollowStats {
  syncs: number;
  adopted: number;
  deleted: number;
  relayed: number;
  ignored: number;
}

export class CatalogFollower {
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  private again = false;
  private tail?: TopicTail;
  private stopped = false;
  private lastBadLog = 0;
  /** runs after each sync (the cluster queue settles forwarded jobs from the repository) */
  afterSync?: () => Promise<unknown>;
  readonly stats: FollowStats = { syncs: 0, adopted: 0, deleted: 0, relayed: 0, ignored: 0 };

  constructor(
    private readonly app: Appliance,
    private readonly log: (level: 'info' | 'warn', fields: Record<string, unknown>, msg: string) => void,
    private readonly pollMs = 1000,
  ) {}

  async start(): Promise<void> {
    // in the background: a node that was away a long time catches up while it already serves
    this.nudge();
    this.timer = setInterval(() => this.nudge(), this.pollMs);
    this.timer.unref();
    const k = this.app.config.kafka;
    if (k) this.tail = await tailTopic(k.brokers, k.eventsTopic, `blockgate-${this.app.events.node}-follow`, (m) => this.received(m), (e) => this.log('warn', { event: 'follow-error', error: e.message }, `events topic: ${e.message}`));
  }

  private received(m: Message): void {
    let e: BlockgateEvent | undefined;
    try {
      e = m.value && m.value.length < 1024 * 1024 ? (JSON.parse(m.value.toString()) as BlockgateEvent) : undefined;
    } catch {
      /* below */
    }
    if (!e || typeof e.type !== 'string' || typeof e.node !== 'string' || typeof e.id !== 'string' || typeof e.resource !== 'string') {
      this.stats.ignored++;
      if (Date.now() - this.lastBadLog > 10_000) {
        this.lastBadLog = Date.now();
        this.log('warn', { event: 'event-ignored', partition: m.partition, offset: m.offset }, `ignored a message on the events topic that is not a blockgate event (${this.stats.ignored} so far)`);
      }
      return;
    }
    if (e.node === this.app.events.node) return;
    this.stats.relayed++;
    this.app.events.relay(e);
    if (e.type.startsWith('backup.') && !e.type.includes('progress')) this.nudge();
  }

  /** a sync soon (several nudges make one) */
  nudge(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.sync().finally(() => {
      this.running = undefined;
      if (this.again) {
        this.again = false;
        this.nudge();
      }
    });
  }

  /** brings the catalog up to the repository now */
  async sync(): Promise<void> {
    const { app } = this;
    this.stats.syncs++;
    const t0 = Date.now();
    try {
      await followRepository(app);
      const listedAt = Date.now();
      const ids = new Set<string>();
      for await (const id of app.repo.listManifests()) ids.add(id);
      const missing = [...ids].filter((id) => !app.catalog.backups.get(id));
      if (missing.length > REBUILD_PAST) {
        // far behind (a node that was away a long time): one rebuild lists the repository once for all
        const r = await rebuildCatalog(app);
        this.stats.adopted += r.added;
        if (r.added) this.log('info', { event: 'catalog-followed', added: r.added, inFlight: r.inFlight }, `adopted ${r.added} backups made on other nodes`);
        for (const e of r.errors) this.log('warn', { event: 'adopt-failed', backup: e.backup, error: e.error }, `cannot adopt backup ${e.backup}: ${e.error}`);
      } else if (missing.length) {
        // a few new manifests: each adopted alone (record, pages, its chunks' index entries), no listing of the repository
        let added = 0;
        for (const id of missing) {
          try {
            if ((await adoptBackup(app, id, 'made on another node of the cluster')) === 'added') added++;
          } catch (e) {
            this.log('warn', { event: 'adopt-failed', backup: id, error: (e as Error).message }, `cannot adopt backup ${id}: ${(e as Error).message}`);
          }
        }
        this.stats.adopted += added;
        if (added) this.log('info', { event: 'catalog-followed', added }, `adopted ${added} backups made on other nodes`);
      }
      const gone: string[] = [];
      await app.catalog.env.transaction(() => {
        for (const { value: b } of app.catalog.backups.getRange({})) {
          // committed after the listing began: its manifest may just not have been listed
          if (b.status !== 'available' || ids.has(b.id) || Date.parse(b.updated_at) >= listedAt - 1000) continue;
          app.catalog.backups.put(b.id, { ...b, status: 'deleted', owner: null, updated_at: now(), notes: [...b.notes, 'deleted from the repository (its manifest is gone), by another node'] });
          app.catalog.maps.remove(b.id);
          gone.push(b.id);
        }
      });
      this.stats.deleted += gone.length;
      await this.afterSync?.();
      if (Date.now() - t0 > 5000) this.log('warn', { event: 'follow-slow', ms: Date.now() - t0 }, `catalog follow took ${Date.now() - t0} ms`);
    } catch (e) {
      this.log('warn', { event: 'follow-failed', error: (e as Error).message }, `catalog follow: ${(e as Error).message}`);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.tail?.close();
    await this.running;
  }
}
