/**
 * Small facts about every record of one LMDB database, read often (each backup-create's quota
 * check, each job's end), kept decoded in memory and re-decoded only for records whose stored
 * bytes changed. Each scan still walks the whole database, but as raw bytes (a copy and a
 * compare per record, no decoding), so what another process wrote is seen at once: the cache
 * never answers from a stale record. A scan inside a write transaction sees that transaction.
 */
import type { Database, RootDatabase } from 'lmdb';

export class FactsCache<T, F> {
  private readonly raw: Database<Buffer, string>;
  private readonly known = new Map<string, { bytes: Buffer; facts: F; seen: number }>();
  private generation = 0;

  constructor(
    env: RootDatabase,
    name: string,
    private readonly decoded: Database<T, string>,
    private readonly extract: (value: T) => F,
    private readonly range: { start?: string; end?: string } = {},
  ) {
    // the same named database, read as bytes
    this.raw = env.openDB<Buffer, string>({ name, encoding: 'binary' });
  }

  /** the facts of every record now in the database (range order) */
  scan(): F[] {
    const gen = ++this.generation;
    const out: F[] = [];
    for (const { key, value } of this.raw.getRange(this.range)) {
      let k = this.known.get(key);
      if (!k || !k.bytes.equals(value)) {
        const v = this.decoded.get(key);
        if (v === undefined) continue;
        k = { bytes: Buffer.from(value), facts: this.extract(v), seen: gen };
        this.known.set(key, k);
      }
      k.seen = gen;
      out.push(k.facts);
    }
    if (this.known.size > out.length) for (const [key, k] of this.known) if (k.seen !== gen) this.known.delete(key);
    return out;
  }
}
