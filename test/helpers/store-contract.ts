/**
 * The ObjectStore contract as a reusable ava suite: every repository driver (directory, S3,
 * ...) must pass it. Usage:
 *
 *   objectStoreContract(test, 'dir', async (t) => ({ store: new DirStore(tmpDir(t)) }));
 *
 * The factory is called once per test and must return an empty store of its own (tests run
 * concurrently); the suite closes it and calls `cleanup` afterwards.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { ExecutionContext } from 'ava';
import { ObjectNotFoundError, type ObjectStore } from '../../drivers/store/types.js';

/** Declares one test: ava's `test`, `test.serial`, or a wrapper that skips (see helpers/ceph.ts). */
export type DeclareTest = (title: string, implementation: (t: ExecutionContext) => PromiseLike<void> | void) => void;

export interface StoreUnderTest {
  store: ObjectStore;
  cleanup?: () => Promise<void> | void;
  /** strings that must never appear in `location` (credentials) */
  secrets?: string[];
}

export interface StoreContractOptions {
  /** also list this many keys (e.g. 1100 to cross S3's 1000-key pages); 0 or absent: skipped */
  manyKeys?: number;
}

async function collect(it: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const n of it) out.push(n);
  return out.sort();
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

export function objectStoreContract(
  test: DeclareTest,
  driver: string,
  factory: (t: ExecutionContext) => Promise<StoreUnderTest>,
  opts: StoreContractOptions = {},
): void {
  const open = async (t: ExecutionContext): Promise<ObjectStore> => {
    const u = await factory(t);
    t.teardown(async () => {
      await u.store.close?.();
      await u.cleanup?.();
    });
    for (const s of u.secrets ?? []) t.false(u.store.location.includes(s), 'location shows no credentials');
    return u.store;
  };
  const title = (s: string) => `${driver} store: ${s}`;

  test(title('put then get returns the same bytes (empty, small, 1 MiB random)'), async (t) => {
    const store = await open(t);
    const objects: Array<[string, Buffer]> = [
      ['empty', Buffer.alloc(0)],
      ['config', Buffer.from('{"version":1}')],
      ['chunks/ab/ab0123', randomBytes(1 << 20)],
      ['manifests/backup-1.json', Buffer.from(JSON.stringify({ id: 'backup-1', blocks: [1, 2, 3] }))],
    ];
    for (const [name, data] of objects) await store.put(name, data);
    for (const [name, data] of objects) {
      const got = await store.get(name);
      t.true(Buffer.isBuffer(got), `${name} is a Buffer`);
      t.is(got.length, data.length, `${name} length`);
      t.is(sha(got), sha(data), `${name} content`);
    }
  });

  test(title('put replaces an existing object'), async (t) => {
    const store = await open(t);
    await store.put('a/obj', Buffer.from('first version, longer than the second'));
    await store.put('a/obj', Buffer.from('second'));
    t.is((await store.get('a/obj')).toString(), 'second');
  });

  test(title('get of a missing object throws ObjectNotFoundError'), async (t) => {
    const store = await open(t);
    const e = await t.throwsAsync(store.get('chunks/00/missing'), { instanceOf: ObjectNotFoundError });
    t.is(e?.code, 'ENOENT');
    t.is(e?.objectName, 'chunks/00/missing');
    await store.put('chunks/00/present', Buffer.from('x'));
    await t.throwsAsync(store.get('chunks/00/presen'), { instanceOf: ObjectNotFoundError }, 'a prefix of a name is not the object');
  });

  test(title('has tells present from absent'), async (t) => {
    const store = await open(t);
    t.false(await store.has('x/y'));
    await store.put('x/y', Buffer.from('1'));
    t.true(await store.has('x/y'));
    t.false(await store.has('x'), 'a folder is not an object');
    t.false(await store.has('x/y2'));
  });

  test(title('delete removes; deleting an absent object is not an error'), async (t) => {
    const store = await open(t);
    await store.put('d/1', Buffer.from('1'));
    await store.put('d/2', Buffer.from('2'));
    await store.delete('d/1');
    t.false(await store.has('d/1'));
    t.true(await store.has('d/2'));
    await t.notThrowsAsync(store.delete('d/1'));
    await t.notThrowsAsync(store.delete('never/existed'));
    await t.throwsAsync(store.get('d/1'), { instanceOf: ObjectNotFoundError });
    t.deepEqual(await collect(store.list('d')), ['d/2']);
  });

  test(title('list returns the full names under a folder prefix'), async (t) => {
    const store = await open(t);
    const names = ['a/1', 'a/2', 'a/b/3', 'ab/4', 'c', 'chunks/00/aa', 'chunks/01/bb'];
    await Promise.all(names.map((n) => store.put(n, Buffer.from(n))));
    t.deepEqual(await collect(store.list('')), [...names].sort());
    t.deepEqual(await collect(store.list('a')), ['a/1', 'a/2', 'a/b/3'], '"a" is the folder a, not ab');
    t.deepEqual(await collect(store.list('a/')), ['a/1', 'a/2', 'a/b/3']);
    t.deepEqual(await collect(store.list('a/b')), ['a/b/3']);
    t.deepEqual(await collect(store.list('chunks')), ['chunks/00/aa', 'chunks/01/bb']);
    t.deepEqual(await collect(store.list('nothing')), []);
    await store.delete('a/2');
    t.deepEqual(await collect(store.list('a')), ['a/1', 'a/b/3']);
  });

  test(title('getRange reads part of an object (short at its end, empty past it); listInfo gives sizes and times'), async (t) => {
    const store = await open(t);
    const data = randomBytes(10_000);
    const before = Date.now() - 60_000;
    await store.put('r/obj', data);
    await store.put('r/small', Buffer.from('abc'));
    t.is(sha(await store.getRange('r/obj', 0, 12)), sha(data.subarray(0, 12)));
    t.is(sha(await store.getRange('r/obj', 9990, 100)), sha(data.subarray(9990)), 'short at the end');
    t.is((await store.getRange('r/obj', 20_000, 10)).length, 0, 'nothing past the end');
    await t.throwsAsync(store.getRange('r/none', 0, 1), { instanceOf: ObjectNotFoundError });
    const infos: { name: string; size: number; mtimeMs: number }[] = [];
    for await (const o of store.listInfo('r')) infos.push(o);
    infos.sort((a, b) => a.name.localeCompare(b.name));
    t.deepEqual(infos.map((o) => [o.name, o.size]), [['r/obj', 10_000], ['r/small', 3]]);
    for (const o of infos) t.true(o.mtimeMs > before && o.mtimeMs < Date.now() + 60_000, `${o.name} mtime ${o.mtimeMs}`);
  });

  test(title('invalid names are refused and nothing is written'), async (t) => {
    const store = await open(t);
    for (const bad of ['../escape', '/abs', 'a//b', 'a/../b', 'UPPER', 'a/', '', 'sp ace', 'a/./b']) {
      await t.throwsAsync(store.put(bad, Buffer.from('x')), undefined, `put ${JSON.stringify(bad)}`);
      await t.throwsAsync(store.get(bad), undefined, `get ${JSON.stringify(bad)}`);
    }
    t.deepEqual(await collect(store.list('')), []);
  });

  test(title('parallel puts and gets'), async (t) => {
    const store = await open(t);
    const items = Array.from({ length: 48 }, (_, i) => [`p/${String(i).padStart(3, '0')}`, randomBytes(1000 + i * 997)] as const);
    await Promise.all(items.map(([n, d]) => store.put(n, d)));
    const got = await Promise.all(items.map(([n]) => store.get(n)));
    items.forEach(([n, d], i) => t.is(sha(got[i]!), sha(d), n));
    t.is((await collect(store.list('p'))).length, items.length);
  });

  if (opts.manyKeys && opts.manyKeys > 0) {
    const n = opts.manyKeys;
    test(title(`list of ${n} objects is complete (paginated)`), async (t) => {
      const store = await open(t);
      const names = Array.from({ length: n }, (_, i) => `many/${String(i).padStart(5, '0')}`);
      for (let i = 0; i < names.length; i += 64) {
        await Promise.all(names.slice(i, i + 64).map((k) => store.put(k, Buffer.from(k))));
      }
      await store.put('other/x', Buffer.from('x'));
      const listed = await collect(store.list('many'));
      t.is(listed.length, n);
      t.deepEqual(listed, names);
      t.is(new Set(listed).size, n, 'no duplicates across pages');
    });
  }

  test(title('location is a non-empty description'), async (t) => {
    const store = await open(t);
    t.is(typeof store.location, 'string');
    t.true(store.location.length > 0);
  });
}
