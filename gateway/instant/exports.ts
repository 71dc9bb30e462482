/**
 * The sessions this daemon serves, as an export source: the target of each running (or
 * completed and still attached) session is served read-write as `restore-<volume>`. A session
 * leaves the table once it is no longer exported and no client holds it; the lazily opened
 * target of a completed session is closed while idle and stays served.
 */
import type { SessionStore } from '../../catalog/sessions.js';
import type { BlockDevice } from '../../blockdev/types.js';
import type { ExportInfo } from '../../nbd/server.js';
import type { Appliance } from '../appliance.js';
import type { HydrateDevice } from '../devices/hydrate.js';
import type { ExportSource } from '../exports/registry.js';

export type Log = (event: string, fields: Record<string, unknown>) => void;

export interface Live {
  id: string;
  exportName: string;
  /** the hydrating device; null for a completed session re-served after a restart (opened on demand) */
  hydrate: HydrateDevice | null;
  /** what clients get: the hydrate device, or the plain target */
  dev: BlockDevice | null;
  refs: number;
  /** served under its export name */
  exported: boolean;
  closing: Promise<void> | null;
}

export class LiveSessions implements ExportSource {
  private readonly live = new Map<string, Live>();
  private stopping = false;

  constructor(
    private readonly app: Appliance,
    private readonly store: SessionStore,
    private readonly log: Log,
  ) {}

  /** the daemon stops: no session is served any more */
  get stopped(): boolean {
    return this.stopping;
  }

  get(id: string): Live | undefined {
    return this.live.get(id);
  }

  values(): IterableIterator<Live> {
    return this.live.values();
  }

  /** serves session id as exportName: its hydrate device, or (null) its plain target opened on demand */
  add(id: string, exportName: string, hydrate: HydrateDevice | null): void {
    this.live.set(id, { id, exportName, hydrate, dev: hydrate, refs: 0, exported: true, closing: null });
  }

  /** stops serving every session and closes them */
  async closeAll(): Promise<void> {
    this.stopping = true;
    for (const l of [...this.live.values()]) {
      l.exported = false;
      await this.close(l);
    }
  }

  list(): ExportInfo[] {
    const out: ExportInfo[] = [];
    for (const l of this.live.values()) {
      if (!l.exported) continue;
      const rec = this.store.get(l.id);
      if (!rec) continue;
      const what = rec.status === 'completed' ? 'restored' : 'instant restore (hydrating)';
      out.push({ name: l.exportName, description: `volume ${rec.volume_name}: ${what} from backup ${rec.backup_name} (${rec.backup_id}), read-write` });
    }
    return out;
  }

  async open(name: string): Promise<BlockDevice | null> {
    for (const l of this.live.values()) {
      if (l.exportName !== name || !l.exported || l.closing) continue;
      if (!l.dev) {
        // a completed session re-served after a restart: the plain target
        const rec = this.store.get(l.id)!;
        const vol = this.app.catalog.volume(rec.volume_id);
        l.dev = await this.app.volumeDriver(vol).open('write');
      }
      l.refs++;
      return l.dev;
    }
    return null;
  }

  async release(_name: string, dev: BlockDevice): Promise<void> {
    for (const l of this.live.values()) {
      if (l.dev !== dev) continue;
      l.refs--;
      if (l.refs > 0) return;
      if (!l.exported || !l.hydrate) await this.close(l);
      return;
    }
  }

  /** closes l's device (a hydrate device commits what it owns); l leaves the table unless still served */
  close(l: Live): Promise<void> {
    l.closing ??= (async () => {
      try {
        if (l.hydrate) await l.hydrate.close();
        else await l.dev?.close?.();
      } catch (e) {
        this.log('instant-restore-error', { session: l.id, error: (e as Error).message });
      }
      if (l.exported && !this.stopping) {
        // a lazily opened target of a completed session: closed while idle, still served
        l.dev = null;
        l.closing = null;
        return;
      }
      this.live.delete(l.id);
    })();
    return l.closing;
  }
}
