/**
 * Group commit: a write transaction that runs with the others queued in the same moment and
 * commits with them, off the event loop (lmdb-js's asynchronous transactions), instead of one
 * synchronous commit and disk sync each on the event loop. Each callback is a child
 * transaction of the batch: one that throws is rolled back alone (all or nothing), and it sees
 * what the callbacks before it in the batch wrote, so checks made inside it (a quota, a state)
 * cannot be overtaken by another caller's. The callback must be synchronous.
 */
import type { RootDatabase } from 'lmdb';

/** runs `fn` in the next batch; resolves once the batch is committed (visible to every reader) */
export function commitBatched<T>(env: RootDatabase, fn: () => T): Promise<T> {
  return env.childTransaction(fn) as Promise<T>;
}

/** as commitBatched, and resolves only once the batch is flushed to disk (survives a crash) */
export async function commitDurably<T>(env: RootDatabase, fn: () => T): Promise<T> {
  const out = await commitBatched(env, fn);
  await env.flushed;
  return out;
}
