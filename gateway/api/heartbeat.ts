/**
 * The service list (`cinder service-list`): one `cinder-backup` service per daemon, whose
 * heartbeat (every HEARTBEAT_MS) is kept in the catalog database `services`; a service is
 * `up` while its last heartbeat is younger than `downAfterMs` (Cinder's service_down_time,
 * 60 s), `down` after. A stopped daemon's record stays, and shows down.
 */
import type { Database, RootDatabase } from 'lmdb';
import { now } from '../../catalog/records.js';

export interface ServiceRecord {
  binary: 'cinder-backup';
  host: string;
  zone: string;
  pid: number;
  started_at: string;
  updated_at: string;
  disabled: boolean;
  disabled_reason: string | null;
}

export const HEARTBEAT_MS = 10_000;

export class Heartbeat {
  readonly db: Database<ServiceRecord, string>;
  private timer?: NodeJS.Timeout;
  private readonly key: string;
  private readonly startedAt = now();

  constructor(
    env: RootDatabase,
    readonly host: string,
    readonly downAfterMs = 60_000,
    private readonly everyMs = HEARTBEAT_MS,
  ) {
    this.db = env.openDB<ServiceRecord, string>({ name: 'services' });
    this.key = `cinder-backup@${host}`;
  }

  beat(): void {
    const cur = this.db.get(this.key);
    this.db.putSync(this.key, { binary: 'cinder-backup', host: this.host, zone: 'nova', pid: process.pid, started_at: this.startedAt, updated_at: now(), disabled: cur?.disabled ?? false, disabled_reason: cur?.disabled_reason ?? null });
  }

  start(): void {
    this.beat();
    this.timer = setInterval(() => {
      try {
        this.beat();
      } catch {
        /* a full disk: the service shows down, which is the truth */
      }
    }, this.everyMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  list(): (ServiceRecord & { state: 'up' | 'down' })[] {
    const t = Date.now();
    return [...this.db.getRange({})].map(({ value: s }) => ({ ...s, state: t - Date.parse(s.updated_at) < this.downAfterMs ? 'up' : 'down' }));
  }
}
