/**
 * The repository driver interface: a flat store of named objects. Names are relative
 * paths made of [a-z0-9._-] segments separated by '/', e.g. "chunks/ab/ab12...",
 * "manifests/<id>.json", "config". Everything above this (chunk format, manifests,
 * compression, encryption) is the same for every driver.
 */
export interface ObjectStore {
  /** human-readable location, without secrets (e.g. "dir:/srv/repo", "s3://bucket/prefix") */
  readonly location: string;
  /**
   * atomically create or replace an object: readers see the old or the new bytes, never a
   * part. Durable on return, unless it is put in a batch: then durable after batch.sync().
   */
  put(name: string, data: Buffer, opts?: PutOptions): Promise<void>;
  /** a new batch of puts to be made durable together (one sync for many objects) */
  batch(): WriteBatch;
  /** the whole object; throws ObjectNotFoundError if absent */
  get(name: string): Promise<Buffer>;
  /** reads the whole object into `into` and returns its length (optional; faster, no allocation) */
  getInto?(name: string, into: Buffer): Promise<number>;
  /** a local file holding the object, for stores on a filesystem (optional) */
  localPath?(name: string): string;
  has(name: string): Promise<boolean>;
  /** removes the object; absent is not an error */
  delete(name: string): Promise<void>;
  /** names (full, relative to the store) under prefix, in no particular order */
  list(prefix: string): AsyncIterable<string>;
  /** like list, with each object's size and last-modified time */
  listInfo(prefix: string): AsyncIterable<ObjectInfo>;
  /** `length` bytes of the object from `offset` (fewer at its end); throws ObjectNotFoundError if absent */
  getRange(name: string, offset: number, length: number): Promise<Buffer>;
  close?(): Promise<void>;
}

export interface ObjectInfo {
  name: string;
  size: number;
  /** last modification, ms since the epoch */
  mtimeMs: number;
}

export interface PutOptions {
  /** skip the per-object flush; the batch's sync() makes it durable with the others */
  batch?: WriteBatch;
}

/** Puts made durable together. sync() throws if any of them could not be made durable. */
export interface WriteBatch {
  sync(): Promise<void>;
}

/** the batch of a store whose every put is durable on return */
export const DURABLE_BATCH: WriteBatch = { sync: async () => undefined };

export class ObjectNotFoundError extends Error {
  readonly code = 'ENOENT';
  constructor(readonly objectName: string, where: string) {
    super(`object ${objectName} not found in ${where}`);
    this.name = 'ObjectNotFoundError';
  }
}

const NAME_RE = /^[a-z0-9][a-z0-9._-]*(\/[a-z0-9][a-z0-9._-]*)*$/;

/** Refuses path-like or malformed object names ("../x", "/abs", "a//b"). */
export function checkObjectName(name: string): string {
  if (!NAME_RE.test(name) || name.split('/').some((s) => s === '.' || s === '..')) {
    throw new Error(`invalid object name ${JSON.stringify(name)}`);
  }
  return name;
}
