/**
 * DigestSet (GC's mark): the same answers as a JS Set of the same names, through several
 * growths; names that are not 64 hex digits are refused on add and are in no set.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { DigestSet } from '../gateway/engine/digest-set.js';

test('as a Set of the same names: add (new or not), has (present, absent), size and the names listed, through many growths', (t) => {
  const d = new DigestSet(4);
  const s = new Set<string>();
  const names = Array.from({ length: 50_000 }, () => randomBytes(32).toString('hex'));
  for (const [i, n] of names.entries()) {
    // every name twice, the second time later: add says whether it was new
    t.is(d.add(n), !s.has(n));
    s.add(n);
    if (i % 3 === 0) t.is(d.add(names[i >> 1]!), false);
  }
  t.is(d.size, s.size);
  for (const n of names) if (!d.has(n)) t.fail(`lost ${n}`);
  let absent = 0;
  for (let i = 0; i < 50_000; i++) if (d.has(randomBytes(32).toString('hex'))) absent++;
  t.is(absent, 0, 'no name that was not added is found');
  t.deepEqual([...d].sort(), [...s].sort());
});

test('names that share their first bytes (one home slot) are all kept apart', (t) => {
  const d = new DigestSet();
  const names = Array.from({ length: 300 }, (_, i) => `00000000${i.toString(16).padStart(56, '0')}`);
  for (const n of names) t.true(d.add(n));
  for (const n of names) t.true(d.has(n));
  t.false(d.has(`00000000${'f'.repeat(56)}`));
  t.is(d.size, 300);
});

test('a string that is not 64 hex digits is refused by add and found by has in no set', (t) => {
  const d = new DigestSet();
  d.add('ab'.repeat(32));
  for (const bad of ['', 'x', 'ab'.repeat(31), 'ab'.repeat(33), `${'ab'.repeat(31)}zz`, '../'.repeat(21) + 'a']) {
    t.throws(() => d.add(bad), { message: /not an object name/ });
    t.false(d.has(bad));
  }
  t.is(d.size, 1);
});
