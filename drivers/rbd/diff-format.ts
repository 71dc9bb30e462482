/**
 * Streaming codec for the RBD diff format written by `rbd export-diff` (v1, "rbd diff v1\n")
 * and found inside `rbd export --export-format 2` streams (v2, "rbd diff v2\n", where every
 * record but the end carries a le64 length). Layout and semantics as written and accepted by
 * Ceph 16.2:
 *
 *   banner, then records:  'f' from-snap (string)   't' to-snap (string)
 *                          'p' protection (u8, v2 only; 16.2 writes length 8 but 1 byte)
 *                          's' image size (le64)
 *                          'w' offset le64, length le64, data     'z' offset le64, length le64
 *                          'e' end (tag only, also in v2)
 *   order: f? t? p? s, then w/z extents ascending and non-overlapping, then e.
 *   integers little-endian; string = le32 length + UTF-8 bytes.
 *
 * What real diffs look like (checked by test/rbd-diff.test.ts on a 16.2 cluster):
 * - extents never cross a RADOS object (4 MiB by default);
 * - a full diff covers each object from its start to its highest written byte, zero fill
 *   included; an incremental one is exact (512 bytes overwritten at 1024 give `w 1024+512`);
 * - data that reads back as zeros, deleted objects and discards become 'z' records; discards
 *   under 64 KiB (rbd_discard_granularity_bytes) are dropped by librbd and never appear;
 * - after a shrink the diff is only the header (no 'z' for the cut-off part): whoever applies
 *   a diff truncates or extends the image to 's' (rbd import-diff resizes the target itself);
 * - `rbd import-diff` takes only v1; `rbd import --export-format 2` takes v2 diffs in an
 *   "rbd image v2" container, and reads 'p' as one byte whatever its length field says.
 *
 * This module holds what the reader (diff-reader.ts) and writer (diff-writer.ts) share;
 * import everything from diff.ts.
 */

export const RBD_DIFF_BANNER_V1 = 'rbd diff v1\n';
export const RBD_DIFF_BANNER_V2 = 'rbd diff v2\n';
export const RBD_DIFF_BANNER_LENGTH = 12;

export const TAG_FROM_SNAP = 0x66; // 'f'
export const TAG_TO_SNAP = 0x74; // 't'
export const TAG_PROTECTED = 0x70; // 'p' (v2)
export const TAG_SIZE = 0x73; // 's'
export const TAG_WRITE = 0x77; // 'w'
export const TAG_ZERO = 0x7a; // 'z'
export const TAG_END = 0x65; // 'e'

/** longest snapshot name accepted or written, in UTF-8 bytes */
export const MAX_SNAP_NAME_BYTES = 4096;

export type RbdDiffVersion = 1 | 2;

/** Any malformed diff stream (or invalid writer input). `offset` is the stream byte offset. */
export class RbdDiffError extends Error {
  readonly code = 'ERBDDIFF';
  constructor(
    message: string,
    /** byte offset in the diff stream where the problem was found */
    readonly offset: number,
    options?: { cause?: unknown },
  ) {
    super(`rbd diff: ${message} (at byte ${offset})`, options);
    this.name = 'RbdDiffError';
  }
}

/** The part of a diff before its extents. */
export interface RbdDiffHeader {
  version: RbdDiffVersion;
  /** 'f': the diff is relative to this snapshot (incremental); absent for a full diff */
  fromSnap?: string;
  /** 't': snapshot the diff leads to; absent when the image head was exported */
  toSnap?: string;
  /** 'p' (v2 only): protection status of toSnap */
  protected?: boolean;
  /** 's': image size in bytes at toSnap; whoever applies the diff resizes to it */
  size: number;
}

/**
 * Records yielded by the reader. A 'w' record is yielded as one or more `data` pieces in
 * ascending order (bounded in size; `extentOffset`/`extentLength` describe the whole record,
 * `last` marks its final piece).
 */
export type RbdDiffRecord =
  | { type: 'from-snap'; name: string }
  | { type: 'to-snap'; name: string }
  | { type: 'protected'; value: boolean }
  | { type: 'size'; size: number }
  | {
      type: 'data';
      /** image offset of this piece */
      offset: number;
      data: Buffer;
      extentOffset: number;
      extentLength: number;
      last: boolean;
    }
  | { type: 'zero'; offset: number; length: number }
  | { type: 'end' };

/** Writer input: changed data, or a range that reads as zeros (discarded/trimmed). */
export type RbdDiffExtent =
  | { type: 'data'; offset: number; data: Buffer }
  | {
      type: 'data';
      offset: number;
      length: number;
      /** streamed payload; must deliver exactly `length` bytes */
      data: AsyncIterable<Uint8Array> | Iterable<Uint8Array>;
    }
  | { type: 'zero'; offset: number; length: number };
