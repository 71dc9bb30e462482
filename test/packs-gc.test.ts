/**
 * GC of a packed repository: dead packs are deleted, mostly-dead packs repacked (their live
 * blobs copied, the index switched, the old pack retired and deleted by a later GC past the
 * retire window); the catalog rebuilt from packs alone; GC and repack SIGKILLed at random
 * points never lose a block any backup names.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Appliance } from '../gateway/appliance.js';
import { loadConfig } from '../gateway/config.js';
import { createVolume } from '../gateway/engine/volumes.js';
import { deleteBackup } from '../gateway/engine/delete.js';
import { collectGarbage } from '../gateway/engine/gc.js';
import { rebuildCatalog } from '../gateway/engine/rebuild.js';
import { verifyBackup } from '../gateway/engine/verify.js';
import { packObjectName } from '../drivers/pack.js';
import { knownPackEntries } from '../gateway/engine/pack-index.js';
import { mapData } from '../gateway/read/map-walk.js';
import { CLI, mixedContent, mutate, sha, tmpDir, writeConfig } from './helpers/core.js';
import { backup, restoreToBuffer } from './helpers/engine.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 16 * KiB;
const CONFIG = { chunkSize: BLOCK, packSize: 2 * MiB, codec: 'zstd' as const };

function packFiles(repoDir: string): string[] {
  const dir = path.join(repoDir, 'packs');
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).flatMap((d) => fs.readdirSync(path.join(dir, d)));
}

/** every block of every available backup has an index entry in a pack that exists and is not retired */
async function problems(app: Appliance): Promise<string[]> {
  const out: string[] = [];
  const retired = new Set((await app.repo.readRetired()).map((r) => r.pack));
  const present = new Set<string>();
  for await (const p of app.repo.listPacks()) present.add(p.id);
  for (const b of app.catalog.listBackups()) {
    if (b.status === 'creating' || b.status === 'deleting') out.push(`backup ${b.name} left ${b.status}`);
    if (b.status !== 'available') continue;
    const map = app.catalog.mapReader(b);
    for (let i = 0; i < map.chunkCount; i++) {
      const d = map.entry(i);
      if (!d) continue;
      const c = app.catalog.chunk(d);
      if (!c?.p) out.push(`backup ${b.name} block ${i}: not indexed`);
      else if (!present.has(c.p)) out.push(`backup ${b.name} block ${i}: pack ${c.p} missing`);
      else if (retired.has(c.p)) out.push(`backup ${b.name} block ${i}: indexed in retired pack ${c.p}`);
    }
  }
  return out;
}

/** a packed repository with volume `vol`: b1 of 8 MiB of random data, then b2 (incremental) of v2Of(b1's data) */
async function twoBackups(t: ExecutionContext, prefix: string, v2Of: (v1: Buffer) => Buffer) {
  t.timeout(3 * 60_000);
  const dir = tmpDir(t, prefix);
  const dataDir = path.join(dir, 'data');
  writeConfig(dataDir, CONFIG);
  const app = await Appliance.open(loadConfig(dataDir));
  t.teardown(() => app.close());
  const file = path.join(dir, 'vol.img');
  const v1 = randomBytes(8 * MiB);
  fs.writeFileSync(file, v1);
  await createVolume(app, { name: 'vol', file });
  const b1 = await backup(app, 'vol', { name: 'b1' });
  const v2 = v2Of(v1);
  fs.writeFileSync(file, v2);
  const b2 = await backup(app, 'vol', { name: 'b2', incremental: true });
  return { app, repoDir: path.join(dataDir, 'repo'), b1, b2, v2 };
}

test('GC deletes dead packs, repacks mostly-dead ones past the threshold, and deletes retired packs after the window', async (t) => {
  // b2 shares a quarter of b1's blocks; the rest is new
  const { app, repoDir, b1, b2, v2 } = await twoBackups(t, 'bg-packs-gc-', (v1) => Buffer.concat([v1.subarray(0, 2 * MiB), randomBytes(6 * MiB)]));
  const before = packFiles(repoDir);
  await deleteBackup(app, b1.id);
  // nothing dead enough at threshold 1: only wholly dead packs go
  const r0 = await collectGarbage(app, { repackThreshold: 1 });
  t.true(r0.packs!.removedPacks > 0, 'packs holding only b1 blocks are deleted');
  t.is(r0.packs!.repackedPacks, 0);
  t.deepEqual(await problems(app), []);
  t.is(sha(await restoreToBuffer(app, b2.id)), sha(v2));
  // the pack holding b1's first quarter (still b2's) together with b1-only blocks is partly dead
  const r1 = await collectGarbage(app, { repackThreshold: 0.01 });
  t.log({ before: before.length, r0: r0.packs, r1: r1.packs });
  t.true(r1.packs!.repackedPacks >= 1, 'a partly dead pack is repacked');
  t.true(r1.packs!.copiedBytes > 0);
  t.deepEqual(await problems(app), []);
  t.is(sha(await restoreToBuffer(app, b2.id)), sha(v2));
  const retired = await app.repo.readRetired();
  t.is(retired.length, r1.packs!.repackedPacks);
  for (const r of retired) t.true(fs.existsSync(path.join(repoDir, packObjectName(r.pack))), 'a retired pack stays for the window');
  // inside the window it stays; past it, the next GC deletes it
  const r2 = await collectGarbage(app, { repackThreshold: 0.01 });
  t.is(r2.packs!.deletedRetired, 0);
  const r3 = await collectGarbage(app, { repackThreshold: 0.01, retireMs: 0 });
  t.is(r3.packs!.deletedRetired, retired.length);
  for (const r of retired) t.false(fs.existsSync(path.join(repoDir, packObjectName(r.pack))));
  t.deepEqual(await app.repo.readRetired(), []);
  t.is(sha(await restoreToBuffer(app, b2.id)), sha(v2));
  t.is((await verifyBackup(app, b2.id)).verify_state, 'ok');
});

test('a repack checks every blob it would copy: a damaged one is not carried into a new pack, its pack is left, the block leaves the index and the next backup stores it anew', async (t) => {
  // b2 keeps every other block of b1: those sit in b1's packs beside blocks only b1 names
  const { app, repoDir, b1, b2, v2 } = await twoBackups(t, 'bg-packs-gc-damaged-', (v1) => {
    const v2 = Buffer.from(v1);
    for (let i = 1; i * BLOCK < v2.length; i += 2) randomBytes(BLOCK).copy(v2, i * BLOCK);
    return v2;
  });
  await deleteBackup(app, b1.id);
  // a block of b2 in a pack that also holds blocks only b1 named: the pack a repack copies it from
  const rec2 = app.catalog.backups.get(b2.id)!;
  const b2Digests = [...mapData(app.catalog.mapReader(rec2), rec2.size_bytes, rec2.chunk_size)].map((r) => r.digest);
  const named = new Set(b2Digests);
  const d0 = b2Digests.find((d) => knownPackEntries(app.catalog, app.catalog.chunk(d)!.p!)!.some((e) => e.kind === 'chunks' && !named.has(e.digest)))!;
  t.truthy(d0, 'b2 has a block in a partly dead pack');
  const at = app.catalog.chunk(d0)!;
  const packFile = path.join(repoDir, packObjectName(at.p!));
  const bytes = fs.readFileSync(packFile);
  bytes[at.o! + Math.floor(at.s / 2)] ^= 0xff;
  fs.writeFileSync(packFile, bytes);
  const r = await collectGarbage(app, { repackThreshold: 0.01 });
  t.log(r.packs);
  t.deepEqual(r.packs!.corrupt.map((c) => [c.pack, c.kind, c.digest]), [[at.p, 'chunks', d0]]);
  t.true(fs.existsSync(packFile), 'the damaged pack is left');
  t.false((await app.repo.readRetired()).some((x) => x.pack === at.p), 'and not retired');
  t.is(app.catalog.chunk(d0), undefined, 'the damaged block left the index');
  t.true(app.catalog.isCorrupt(d0));
  await t.throwsAsync(restoreToBuffer(app, b2.id), undefined, 'b2 still names the damaged block: its restore fails, it does not return wrong bytes');
  // a new backup stores the block anew (in a new pack); the next GC keeps that copy and may now repack the damaged pack
  const b3 = await backup(app, 'vol', { name: 'b3' });
  t.is(sha(await restoreToBuffer(app, b3.id)), sha(v2));
  t.not(app.catalog.chunk(d0)?.p, at.p);
  t.false(app.catalog.isCorrupt(d0));
  const r2 = await collectGarbage(app, { repackThreshold: 0.01 });
  t.log(r2.packs);
  t.deepEqual(r2.packs!.corrupt, [], 'the damaged copy is no longer live: nothing damaged is copied');
  t.deepEqual(await problems(app), []);
  t.is(sha(await restoreToBuffer(app, b3.id)), sha(v2));
  t.is((await verifyBackup(app, b3.id)).verify_state, 'ok');
});

test('a lost catalog is rebuilt from the packs alone: every backup restores and verifies', async (t) => {
  const dir = tmpDir(t, 'bg-packs-rebuild-');
  const dataDir = path.join(dir, 'data');
  writeConfig(dataDir, CONFIG);
  const file = path.join(dir, 'vol.img');
  let data = mixedContent(6 * MiB, BLOCK);
  fs.writeFileSync(file, data);
  const want = new Map<string, string>();
  {
    const app = await Appliance.open(loadConfig(dataDir));
    await createVolume(app, { name: 'vol', file });
    for (let i = 0; i < 3; i++) {
      data = Buffer.from(data);
      mutate(data, BLOCK, 20);
      fs.writeFileSync(file, data);
      want.set((await backup(app, 'vol', { name: `b${i}`, incremental: i > 0 })).id, sha(data));
    }
    await app.close();
  }
  fs.rmSync(path.join(dataDir, 'catalog'), { recursive: true });
  const app = await Appliance.open(loadConfig(dataDir));
  t.teardown(() => app.close());
  const r = await rebuildCatalog(app);
  t.deepEqual(r.errors, []);
  t.is(r.added, 3);
  for (const [id, s] of want) {
    t.is(sha(await restoreToBuffer(app, id)), s);
    t.is((await verifyBackup(app, id)).verify_state, 'ok');
  }
});

/** runs the CLI; SIGKILLed after `ms`, or by itself at a named repack step (`at`) */
function runAndKill(dataDir: string, args: string[], ms: number, at?: string): Promise<'killed' | 'finished' | 'failed'> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, '--data-dir', dataDir, ...args], { stdio: 'ignore', env: { ...process.env, ...(at ? { BLOCKGATE_TEST_GC_KILL_AT: at } : {}) } });
    const timer = setTimeout(() => child.kill('SIGKILL'), ms);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve(signal === 'SIGKILL' ? 'killed' : code === 0 ? 'finished' : 'failed');
    });
  });
}

const STEPS = ['repack-written', 'repack-retired', 'repack-indexed', 'dead-unindexed'];

test('GC and repack SIGKILLed at random points and at every step of a repack lose no block of any backup (12-24 rounds)', async (t) => {
  t.timeout(10 * 60_000);
  const dir = tmpDir(t, 'bg-packs-kill-');
  const dataDir = path.join(dir, 'data');
  writeConfig(dataDir, CONFIG);
  const file = path.join(dir, 'vol.img');
  let data = mixedContent(24 * MiB, BLOCK);
  fs.writeFileSync(file, data);
  const want = new Map<string, string>();
  {
    const app = await Appliance.open(loadConfig(dataDir));
    await createVolume(app, { name: 'vol', file });
    await app.close();
  }
  let kills = 0;
  const killedAt = new Set<string>();
  // 12 rounds, and more (up to 24) while some step of a repack has not been killed at yet
  let round = 0;
  for (; round < 12 || (round < 24 && killedAt.size < STEPS.length); round++) {
    // every 4th round rewrites the whole volume: once the older backups are deleted (two rounds
    // later), their packs are wholly dead, so a GC meets dead packs again and again, not once
    data = round > 0 && round % 4 === 0 ? mixedContent(24 * MiB, BLOCK) : Buffer.from(data);
    mutate(data, BLOCK, 200);
    fs.writeFileSync(file, data);
    {
      const app = await Appliance.open(loadConfig(dataDir));
      try {
        want.set((await backup(app, 'vol', { name: `r${round}`, incremental: round > 0 })).id, sha(data));
        const avail = app.catalog.listBackups().filter((b) => b.status === 'available');
        if (avail.length > 2) {
          await deleteBackup(app, avail[0]!.id);
          want.delete(avail[0]!.id);
        }
      } finally {
        await app.close();
      }
    }
    // a low threshold and no retire window: every GC repacks, and deletes what earlier ones retired;
    // killed at a step of the repack (each step in turn), or after a random time, or not at all
    // (a step this GC never reaches, with nothing dead yet, is tried again in the next round)
    const left = STEPS.filter((s) => !killedAt.has(s));
    const at = round % 3 === 2 || !left.length ? undefined : left[round % left.length];
    const ms = at ? 120_000 : round % 6 === 5 ? 120_000 : 300 + Math.floor(Math.random() * 2000);
    const outcome = await runAndKill(dataDir, ['repo', 'gc', '--repack-threshold', '0.05', '--retire', '0'], ms, at);
    if (outcome === 'killed') kills++;
    if (outcome === 'killed' && at) killedAt.add(at);
    t.not(outcome, 'failed', `gc round ${round}`);
    const app = await Appliance.open(loadConfig(dataDir));
    try {
      t.deepEqual(await problems(app), [], `after gc round ${round} (${outcome})`);
      for (const [id, s] of want) t.is(sha(await restoreToBuffer(app, id)), s, `restore of ${id} after round ${round}`);
    } finally {
      await app.close();
    }
  }
  const app = await Appliance.open(loadConfig(dataDir));
  t.teardown(() => app.close());
  await collectGarbage(app, { repackThreshold: 0.05, retireMs: 0 });
  t.deepEqual(await problems(app), []);
  for (const [id, s] of want) {
    t.is(sha(await restoreToBuffer(app, id)), s);
    t.is((await verifyBackup(app, id)).verify_state, 'ok');
  }
  t.log(`${kills} of ${round} GCs killed mid-way; at steps ${[...killedAt].join(', ')}`);
  t.deepEqual([...killedAt].sort(), [...STEPS].sort(), 'a GC died at every step of a repack');
});
