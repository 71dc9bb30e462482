/**
 * The one walk of a backup's block map: a range of its blocks as runs, each a data block (its
 * chunk's digest) or a run of consecutive holes, with their byte offsets and lengths (the last
 * block may be short). The backup device, restore, restore into RBD, instant restore's first
 * start and the backup engine's counts all walk a map through it; a single block is looked up
 * with MapReader.entry.
 */
import type { MapReader } from '../../catalog/blockmap.js';

export interface MapRun {
  /** first block of the run */
  index: number;
  /** blocks in the run: 1 for a data block; consecutive holes are one run */
  blocks: number;
  offset: number;
  length: number;
  /** the chunk's digest, null for a run of holes */
  digest: string | null;
}

/**
 * The runs of blocks [from, to) of a map of `size` bytes in blocks of `chunkSize`; `to` is
 * clipped to the map's end. A run of holes is at most `maxHoleBlocks` blocks long (a copy that
 * writes zeroes spreads them over its pipeline).
 */
export function* mapRuns(map: MapReader, size: number, chunkSize: number, from = 0, to = map.chunkCount, maxHoleBlocks = Infinity): Generator<MapRun> {
  const end = Math.min(to, map.chunkCount);
  let hole: MapRun | null = null;
  for (let i = Math.max(0, from); i < end; i++) {
    const digest = map.entry(i);
    const offset = i * chunkSize;
    const length = Math.min(chunkSize, size - offset);
    if (digest === null) {
      if (hole && hole.blocks >= maxHoleBlocks) {
        yield hole;
        hole = null;
      }
      if (hole) {
        hole.blocks++;
        hole.length += length;
      } else hole = { index: i, blocks: 1, offset, length, digest: null };
      continue;
    }
    if (hole) yield hole;
    hole = null;
    yield { index: i, blocks: 1, offset, length, digest };
  }
  if (hole) yield hole;
}

/** the data blocks of [from, to) (holes left out) */
export function* mapData(map: MapReader, size: number, chunkSize: number, from?: number, to?: number): Generator<MapRun & { digest: string }> {
  for (const r of mapRuns(map, size, chunkSize, from, to)) if (r.digest !== null) yield r as MapRun & { digest: string };
}
