/**
 * The public contract of the hydrate filter (gateway/devices/hydrate.ts, which re-exports
 * these): what a caller supplies (the backup as a source, the catalog as the ownership log,
 * the options) and what it gets back (stats).
 */

/** The backup side: what each block held when the backup was taken. */
export interface HydrateSource {
  /** bytes of the backup (the target may be larger; what lies past this is the target's own) */
  readonly size: number;
  /** true if block i is a hole (reads as zeroes) in the backup */
  isHole(block: number): boolean;
  /** the backup's bytes of block i (min(blockSize, size - i*blockSize) bytes), null for a hole; callers do not modify it */
  read(block: number): Promise<Buffer | null>;
}

/** Where ownership is made durable (the catalog). */
export interface OwnershipLog {
  /** commits the ownership of these blocks in one transaction; resolves once it is durable */
  commit(blocks: number[], bytesCopied: number): Promise<void>;
}

export interface HydrateOptions {
  blockSize: number;
  /** makes ownership durable (the catalog); called after the target's fdatasync */
  commit?: OwnershipLog['commit'];
  /** blocks already owned (committed), one byte per block; default none */
  owned?: Uint8Array;
  /**
   * blocks whose target bytes are known to read as zeroes (a freshly truncated sparse target),
   * owned or not: zeroing them needs no I/O, and block status reports them as holes
   */
  knownZero?: Uint8Array;
  /** parallel block copies of the background copier (default 4) */
  concurrency?: number;
  /** background copy rate, bytes per second; 0 = unlimited (default) */
  rateBytesPerSec?: number;
  /** commit copied blocks at least this often (default 1000 ms) */
  syncIntervalMs?: number;
  /** ...or when this many blocks wait for their commit (default 256) */
  syncBlocks?: number;
  /** the copier gives way to guest I/O for at most this long per block (default 50 ms) */
  guestYieldMs?: number;
  /** copier retries of a failing block read before the session fails (default 4) */
  retries?: number;
  log?: (event: string, fields: Record<string, unknown>) => void;
  /** every block owned and committed */
  onComplete?: () => void;
  /** the copier cannot go on (a block of the backup cannot be read) */
  onError?: (e: Error) => void;
  /**
   * FOR TESTS ONLY: break the ordering on purpose, to show the crash test catches it.
   * 'commit-before-flush': commit bits before the target's fdatasync; 'flush-without-commit':
   * a guest FLUSH/FUA syncs the target but does not commit the bits of the blocks it covers.
   */
  unsafeForTest?: 'commit-before-flush' | 'flush-without-commit';
}

export interface HydrateStats {
  blocksTotal: number;
  /** owned in memory (the target holds the data) */
  blocksOwned: number;
  /** owned and committed */
  blocksDurable: number;
  bytesCopied: number;
  /** bytes/s brought in over the last few seconds */
  rate: number;
  guestReadsFromBackup: number;
  copierRunning: boolean;
}
