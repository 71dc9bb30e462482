/** Every fuzz target, by name. */
import { chunkTarget } from './chunk.js';
import type { Target } from './engine.js';
import { manifestTarget } from './manifest.js';
import { nbdHandshakeTarget } from './nbd-handshake.js';
import { nbdTransmissionTarget } from './nbd-transmission.js';
import { partitionsTarget } from './partitions.js';
import { rbdDiffTarget } from './rbd-diff.js';
import { recordTarget } from './record.js';

export const TARGETS: Target[] = [nbdHandshakeTarget, nbdTransmissionTarget, rbdDiffTarget, manifestTarget, recordTarget, chunkTarget, partitionsTarget];

export function targetByName(name: string): Target {
  const t = TARGETS.find((x) => x.name === name);
  if (!t) throw new Error(`unknown fuzz target ${JSON.stringify(name)}: one of ${TARGETS.map((x) => x.name).join(', ')}`);
  return t;
}
