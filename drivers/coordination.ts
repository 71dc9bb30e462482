/**
 * Coordination between appliances that share one repository, kept in the repository itself
 * (directory/NFS or S3 alike; it needs only put, get, list and delete with read-after-write
 * consistency, which both give):
 *
 * - `locks/gc-<token>.json`: a GC holds this while it runs. To take it, a GC writes its own
 *   lock object first and lists `locks/` after: if any other live lock is there, it removes
 *   its own and gives up. Two GCs racing may both give up; they can never both go on.
 * - `leases/<token>.json`: a writer (a backup) holds one from before it looks anything up in
 *   its chunk index until its record is committed. A GC that finds a live lease gives up.
 * - `epoch`: a random token a GC replaces after it took its lock and found no live lease,
 *   and before it lists the manifests it marks from. A writer reads it before it starts and
 *   again after its manifest is written: if it changed, a GC may have swept what the writer
 *   deduplicated onto, and the writer fails (and removes its manifest) instead of committing.
 *   A catalog that sees a new epoch first drops the index entries of objects that are gone.
 *
 * Holders heartbeat their object while they run; a holder is live if it is on this host and
 * its process (pid + start time, same boot) still runs, or on another host and its heartbeat
 * is younger than its TTL. Leases decide liveness only; safety rests on the epoch, which
 * needs no clock: see gateway/engine/gc.ts for the argument.
 */
import { randomBytes } from 'node:crypto';
import { type ProcessIdentity, identityState, selfIdentity } from './process-identity.js';
import { ObjectNotFoundError, type ObjectStore } from './store/types.js';

export const DEFAULT_TTL_MS = 10 * 60 * 1000;

export interface Holder {
  token: string;
  kind: 'gc' | 'writer';
  purpose: string;
  who: ProcessIdentity;
  started: string;
  /** ms since the epoch of the last heartbeat */
  heartbeat: number;
  ttl_ms: number;
}

export interface EpochRecord {
  token: string;
  at: string;
  by: ProcessIdentity;
}

const TOKEN_RE = /^[0-9a-f]{32}$/;

/** tokens this process released, even if removing their object failed (the store was unreachable) */
const releasedHere = new Set<string>();

export function holderLive(h: Holder, nowMs = Date.now()): boolean {
  if (releasedHere.has(h.token) && h.who.pid === process.pid) return false;
  const state = identityState(h.who);
  if (state === 'alive') return true;
  if (state === 'dead') return false;
  return nowMs - h.heartbeat < h.ttl_ms;
}

export function describeHolder(h: Holder): string {
  return `${h.purpose} on ${h.who.host} (pid ${h.who.pid}, since ${h.started})`;
}

/** A lock or lease object this process holds; heartbeats itself until released. */
export class HeldObject {
  private timer: NodeJS.Timeout | null = null;
  private released = false;
  /** the last heartbeat error, if the store refused one */
  heartbeatError: Error | null = null;

  constructor(private readonly store: ObjectStore, readonly name: string, private holder: Holder) {
    this.timer = setInterval(() => {
      this.renew().catch((e: unknown) => {
        this.heartbeatError = e as Error;
      });
    }, Math.max(1000, Math.floor(holder.ttl_ms / 4)));
    this.timer.unref();
  }

  get token(): string {
    return this.holder.token;
  }

  async renew(): Promise<void> {
    if (this.released) return;
    this.holder = { ...this.holder, heartbeat: Date.now() };
    await this.store.put(this.name, Buffer.from(JSON.stringify(this.holder)));
    this.heartbeatError = null;
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    releasedHere.add(this.holder.token);
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    // if this fails, the object stays until a GC finds it stale (this process never counts it live again)
    await this.store.delete(this.name);
  }
}

function newHolder(kind: Holder['kind'], purpose: string, ttlMs: number): Holder {
  const t = Date.now();
  return { token: randomBytes(16).toString('hex'), kind, purpose, who: selfIdentity(), started: new Date(t).toISOString(), heartbeat: t, ttl_ms: ttlMs };
}

async function readHolders(store: ObjectStore, prefix: 'locks/' | 'leases/'): Promise<{ name: string; holder: Holder }[]> {
  const out: { name: string; holder: Holder }[] = [];
  for await (const name of store.list(prefix)) {
    const m = /^(?:locks\/gc-|leases\/)([0-9a-f]{32})\.json$/.exec(name);
    if (!m) continue;
    let holder: Holder;
    try {
      holder = JSON.parse((await store.get(name)).toString('utf8')) as Holder;
    } catch (e) {
      if (e instanceof ObjectNotFoundError) continue; // released meanwhile
      // unreadable (torn by a crash on a store without atomic puts): treat as expired at once
      holder = { token: m[1]!, kind: 'gc', purpose: 'unreadable lock', who: { host: '?', pid: 0, boot: '', start: 0 }, started: '', heartbeat: 0, ttl_ms: 0 };
    }
    if (!TOKEN_RE.test(String(holder.token))) continue;
    out.push({ name, holder });
  }
  return out;
}

/** Live holders under a prefix (stale ones are removed on the way), except `exceptToken`. */
async function liveHolders(store: ObjectStore, prefix: 'locks/' | 'leases/', exceptToken?: string): Promise<Holder[]> {
  const live: Holder[] = [];
  for (const { name, holder } of await readHolders(store, prefix)) {
    if (holder.token === exceptToken) continue;
    if (holderLive(holder)) live.push(holder);
    else await store.delete(name);
  }
  return live;
}

export class RepositoryBusyError extends Error {
  constructor(message: string, readonly holders: Holder[]) {
    super(message);
    this.name = 'RepositoryBusyError';
  }
}

/** Takes the repository's GC lock, or throws RepositoryBusyError naming who holds it. */
export async function acquireGcLock(store: ObjectStore, ttlMs = DEFAULT_TTL_MS): Promise<HeldObject> {
  const holder = newHolder('gc', 'garbage collection', ttlMs);
  const name = `locks/gc-${holder.token}.json`;
  await store.put(name, Buffer.from(JSON.stringify(holder)));
  const held = new HeldObject(store, name, holder);
  let others: Holder[];
  try {
    others = await liveHolders(store, 'locks/', holder.token);
  } catch (e) {
    await held.release().catch(() => undefined);
    throw e;
  }
  if (others.length) {
    await held.release();
    throw new RepositoryBusyError(`garbage collection already running: ${others.map(describeHolder).join('; ')}`, others);
  }
  return held;
}

/** The live GC lock of the repository, if any. */
export async function runningGc(store: ObjectStore): Promise<Holder | undefined> {
  return (await liveHolders(store, 'locks/'))[0];
}

/** Live writer leases other than `exceptToken`. */
export function liveWriters(store: ObjectStore, exceptToken?: string): Promise<Holder[]> {
  return liveHolders(store, 'leases/', exceptToken);
}

/** Starts a writer lease (heartbeating) for `purpose`. */
export async function startWriterLease(store: ObjectStore, purpose: string, ttlMs = DEFAULT_TTL_MS): Promise<HeldObject> {
  const holder = newHolder('writer', purpose, ttlMs);
  const name = `leases/${holder.token}.json`;
  await store.put(name, Buffer.from(JSON.stringify(holder)));
  return new HeldObject(store, name, holder);
}

/** True while the writer lease `token` is held by a live writer (its backup is not settled yet). */
export async function writerLive(store: ObjectStore, token: string): Promise<boolean> {
  if (!TOKEN_RE.test(token)) return false;
  let holder: Holder;
  try {
    holder = JSON.parse((await store.get(`leases/${token}.json`)).toString('utf8')) as Holder;
  } catch {
    return false;
  }
  return holderLive(holder);
}

/** The repository's GC epoch token ("" before the first GC). */
export async function readEpoch(store: ObjectStore): Promise<string> {
  try {
    const rec = JSON.parse((await store.get('epoch')).toString('utf8')) as EpochRecord;
    return typeof rec.token === 'string' ? rec.token : '';
  } catch (e) {
    if (e instanceof ObjectNotFoundError) return '';
    throw e;
  }
}

/** A GC starts a new epoch (after taking its lock and finding no live writer). */
export async function newEpoch(store: ObjectStore): Promise<string> {
  const rec: EpochRecord = { token: randomBytes(16).toString('hex'), at: new Date().toISOString(), by: selfIdentity() };
  await store.put('epoch', Buffer.from(JSON.stringify(rec)));
  return rec.token;
}
