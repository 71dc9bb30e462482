/** The `instant` section of blockgate.json: how instant-restore sessions copy and commit. */
import type { Appliance } from '../appliance.js';

export interface InstantConfig {
  /** parallel block copies per session */
  concurrency: number;
  /** bytes/s per session, 0 = unlimited */
  rate: number;
  /** commit copied blocks at least this often */
  syncIntervalMs: number;
  /** ...or every this many blocks */
  syncBlocks: number;
}

/** `"instant": { "concurrency": 6, "rate": 0, "syncIntervalMs": 1000, "syncBlocks": 256 }` in blockgate.json */
export function instantConfig(app: Appliance): InstantConfig {
  const c = ((app.config as unknown as { instant?: Partial<InstantConfig> }).instant ?? {}) as Partial<InstantConfig>;
  const num = (v: unknown, d: number) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : d);
  return {
    concurrency: Math.max(1, Math.floor(num(c.concurrency, app.config.pipelineDepth || 6))),
    rate: num(c.rate, 0),
    syncIntervalMs: Math.max(10, num(c.syncIntervalMs, 1000)),
    syncBlocks: Math.max(1, Math.floor(num(c.syncBlocks, 256))),
  };
}
