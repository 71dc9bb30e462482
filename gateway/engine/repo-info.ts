/** Repository figures: sizes, chunk count and the deduplication ratio. */
import type { Appliance } from '../appliance.js';

export function repoInfo(app: Appliance) {
  const { catalog, repo } = app;
  let chunks = 0;
  let stored = 0;
  let plain = 0;
  for (const { value } of catalog.chunks.getRange({})) {
    chunks++;
    stored += value.s;
    plain += value.n;
  }
  const live = catalog.liveBackups().filter((b) => b.status !== 'error');
  const logical = live.reduce((s, b) => s + b.data_bytes, 0);
  return {
    id: repo.config.id,
    location: repo.store.location,
    format: repo.config.format,
    chunk_size: repo.config.chunkSize,
    /** 0: one object per chunk; else chunks and pages are packed into objects of about this size */
    pack_size: repo.config.packSize ?? 0,
    codec: repo.config.codec,
    backups: live.length,
    volumes: catalog.listVolumes().length,
    chunks,
    pages: catalog.pages.getCount(),
    packs: catalog.packs.getCount(),
    stored_bytes: stored,
    unique_bytes: plain,
    logical_bytes: logical,
    dedup_ratio: plain ? +(logical / plain).toFixed(2) : 0,
    compression_ratio: stored ? +(plain / stored).toFixed(2) : 0,
  };
}
