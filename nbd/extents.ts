/**
 * Allocation information from a device's optional blockStatus(), cleaned up for the wire:
 * contiguous, clamped to the request, merged when flags repeat. Used by BLOCK_STATUS
 * (base:allocation) and to split structured reads into data and hole chunks.
 */
import type { BlockDevice } from '../blockdev/types.js';
import { STATE_HOLE, STATE_ZERO } from './protocol.js';

export interface Segment {
  offset: number;
  length: number;
  /** base:allocation flags: STATE_HOLE | STATE_ZERO */
  flags: number;
}

export interface ReadPart {
  offset: number;
  length: number;
  /** absent for a hole (reads as zeroes) */
  data?: Buffer;
  /** set when reading this part failed */
  error?: unknown;
  hole: boolean;
}

/** the spec's bound on descriptors per BLOCK_STATUS chunk */
const MAX_DESCRIPTORS = 1 << 20;
/** zero extents shorter than this inside a read are read as data rather than sent as holes */
const MIN_HOLE = 4096;
/** a read split into more parts than this is read in one piece */
const MAX_READ_PARTS = 256;

/**
 * Walks [offset, offset+length) with device.blockStatus. Returns contiguous segments from
 * `offset`; may stop short when the device gives no further progress or limits are hit.
 */
export async function walk(dev: BlockDevice, offset: number, length: number, maxCalls: number, maxSegments: number): Promise<Segment[]> {
  const segs: Segment[] = [];
  const end = offset + length;
  let pos = offset;
  let full = false;
  for (let calls = 0; pos < end && calls < maxCalls && !full; calls++) {
    const list = await dev.blockStatus!(pos, end - pos);
    if (!Array.isArray(list)) break;
    const start = pos;
    for (const e of list) {
      if (!e || !Number.isSafeInteger(e.offset) || !Number.isSafeInteger(e.length) || e.length <= 0) continue;
      const eEnd = Math.min(e.offset + e.length, end);
      if (eEnd <= pos) continue;
      if (e.offset > pos) break; // a gap the device did not describe
      const flags = (e.hole ? STATE_HOLE : 0) | (e.zero ? STATE_ZERO : 0);
      const last = segs[segs.length - 1];
      if (last && last.flags === flags) last.length += eEnd - pos;
      else if (segs.length >= maxSegments) {
        full = true;
        break;
      } else segs.push({ offset: pos, length: eEnd - pos, flags });
      pos = eEnd;
      if (pos >= end) break;
    }
    if (pos === start) break;
  }
  return segs;
}

/** Extents for one BLOCK_STATUS reply (a single context). Never empty; lengths fit 32 bits. */
export async function blockStatus(dev: BlockDevice, offset: number, length: number, one: boolean): Promise<Array<{ length: number; flags: number }>> {
  if (typeof dev.blockStatus !== 'function') return [{ length, flags: 0 }];
  const segs = await walk(dev, offset, length, one ? 4 : 16, one ? 1 : MAX_DESCRIPTORS);
  if (segs.length === 0) return [{ length, flags: 0 }];
  return (one ? segs.slice(0, 1) : segs).map((s) => ({ length: s.length, flags: s.flags }));
}

/**
 * Reads [offset, offset+length) as data parts and hole parts (zero extents). Failures of
 * individual parts are reported in the part rather than thrown.
 */
export async function sparseRead(dev: BlockDevice, offset: number, length: number): Promise<ReadPart[]> {
  let segs: Segment[] = [];
  try {
    segs = await walk(dev, offset, length, 16, MAX_READ_PARTS);
  } catch {
    segs = [];
  }
  // plan: hole parts for big-enough zero segments, data for the rest (merged)
  const plan: Array<{ offset: number; length: number; hole: boolean }> = [];
  const add = (o: number, l: number, hole: boolean) => {
    const last = plan[plan.length - 1];
    if (last && last.hole === hole) last.length += l;
    else plan.push({ offset: o, length: l, hole });
  };
  let covered = offset;
  for (const s of segs) {
    add(s.offset, s.length, (s.flags & STATE_ZERO) !== 0 && s.length >= MIN_HOLE);
    covered = s.offset + s.length;
  }
  if (covered < offset + length) add(covered, offset + length - covered, false);
  if (plan.length > MAX_READ_PARTS) {
    plan.length = 0;
    plan.push({ offset, length, hole: false });
  }
  return Promise.all(
    plan.map(async (p): Promise<ReadPart> => {
      if (p.hole) return { ...p };
      try {
        return { ...p, data: checkRead(await dev.read(p.offset, p.length), p.length) };
      } catch (error) {
        return { ...p, error };
      }
    }),
  );
}

/** A device read must return exactly what was asked. */
export function checkRead(data: Buffer, length: number): Buffer {
  if (!Buffer.isBuffer(data) && !((data as unknown) instanceof Uint8Array)) throw new Error('device read returned no buffer');
  if (data.length === length) return data;
  if (data.length > length) return data.subarray(0, length);
  throw new Error(`device returned ${data.length} of ${length} bytes`);
}
