/**
 * What a session's hydrate device starts from, besides its target and the backup as its lower
 * device: which blocks the target owns when hydration (re)starts — on the first start the
 * prepared target, on resume the bitmap committed in the catalog.
 */
import type { MapReader } from '../../catalog/blockmap.js';
import type { SessionRecord, SessionStore } from '../../catalog/sessions.js';
import type { VolumeDevice } from '../../drivers/volume/types.js';
import { mapRuns } from '../read/map-walk.js';

export interface StartingOwnership {
  /** the session record, `running` after a first start */
  rec: SessionRecord;
  /** blocks owned (committed), one byte per block */
  owned: Uint8Array;
  /** blocks whose target bytes read as zeroes (a freshly truncated sparse target) */
  knownZero: Uint8Array | undefined;
}

/**
 * First start (status `starting`): prepares the target and commits its initial bitmap, the
 * session `running`. Resume: loads the committed bitmap.
 */
export async function startingOwnership(store: SessionStore, rec: SessionRecord, target: VolumeDevice, map: MapReader, backupSize: number): Promise<StartingOwnership> {
  const blocks = Math.ceil(target.size / rec.block_size);
  const backupBlocks = Math.ceil(backupSize / rec.block_size);
  if (rec.status !== 'starting') return { rec, owned: store.loadOwned(rec.id, blocks), knownZero: undefined };
  // nothing was exported yet: make a file target sparse, so every hole of the backup
  // (and whatever lies past its end) already reads as zeroes and is owned from the start
  const sparse = target.sparseFile && !!target.makeSparse;
  if (sparse) await target.makeSparse!();
  const owned = new Uint8Array(blocks);
  owned.fill(1, backupBlocks); // past the backup: the target's own bytes, as a plain restore leaves them
  if (sparse) for (const r of mapRuns(map, backupSize, rec.block_size, 0, backupBlocks)) if (r.digest === null) owned.fill(1, r.index, r.index + r.blocks);
  const knownZero = sparse ? new Uint8Array(blocks).fill(1) : undefined; // the whole file was just truncated
  await target.flush?.();
  const running = await store.initialize(rec.id, owned, { status: 'running', blocks_total: blocks, size_bytes: target.size });
  return { rec: running, owned, knownZero };
}
