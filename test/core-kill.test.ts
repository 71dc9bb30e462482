import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { Appliance } from '../gateway/appliance.js';
import { loadConfig } from '../gateway/config.js';
import { deleteBackup } from '../gateway/engine/delete.js';
import { CLI, mixedContent, mutate, sha, tmpDir, writeConfig } from './helpers/core.js';
import { restoreToBuffer } from './helpers/engine.js';
import { createVolume } from '../gateway/engine/volumes.js';

const CS = 64 * 1024;
const ROUNDS = 10;

/** Runs the CLI and SIGKILLs it after `ms` (or lets it finish if it is quicker). */
function runAndKill(dataDir: string, args: string[], ms: number): Promise<'killed' | 'finished' | 'failed'> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, '--data-dir', dataDir, ...args], { stdio: 'ignore' });
    const timer = setTimeout(() => child.kill('SIGKILL'), ms);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve(signal === 'SIGKILL' ? 'killed' : code === 0 ? 'finished' : 'failed');
    });
  });
}

/** No backup is left creating, and every available backup names only chunks that exist. */
async function checkInvariants(app: Appliance): Promise<string[]> {
  const problems: string[] = [];
  for (const b of app.catalog.listBackups()) {
    if (b.status === 'creating' || b.status === 'deleting') problems.push(`backup ${b.name} left ${b.status}`);
    if (b.status !== 'available') continue;
    const map = app.catalog.mapReader(b);
    for (let i = 0; i < Math.ceil(b.size_bytes / b.chunk_size); i++) {
      const d = map.entry(i);
      if (d && !(await app.repo.store.has(`chunks/${d.slice(0, 2)}/${d}`))) problems.push(`backup ${b.name} block ${i}: chunk ${d} missing`);
      if (d && !app.catalog.chunk(d)) problems.push(`backup ${b.name} block ${i}: chunk ${d} not indexed`);
    }
  }
  return problems;
}

test(`SIGKILL at random points of backup and GC leaves no partial available backup and no missing chunk (${ROUNDS} rounds)`, async (t) => {
  t.timeout(10 * 60_000);
  const dir = tmpDir(t);
  const dataDir = path.join(dir, 'data');
  writeConfig(dataDir, { chunkSize: CS, codec: 'zstd' });
  const volFile = path.join(dir, 'vol.img');
  let data = mixedContent(48 * 1024 * 1024, CS);
  fs.writeFileSync(volFile, data);
  const expected = new Map<string, string>();
  {
    const app = await Appliance.open(loadConfig(dataDir));
    await createVolume(app, { name: 'vol', file: volFile });
    await app.close();
  }
  let kills = 0;
  for (let round = 0; round < ROUNDS; round++) {
    data = Buffer.from(data);
    mutate(data, CS, 40);
    fs.writeFileSync(volFile, data);
    const name = `r${round}`;
    expected.set(name, sha(data));
    const args = ['backup', 'create', 'vol', '--name', name, ...(round % 2 ? ['--incremental'] : [])];
    const outcome = await runAndKill(dataDir, args, 150 + Math.floor(Math.random() * 2500));
    if (outcome === 'killed') kills++;
    const app = await Appliance.open(loadConfig(dataDir)); // settles what the killed process left
    try {
      t.deepEqual(await checkInvariants(app), [], `after backup round ${round} (${outcome})`);
      // killed before it recorded anything is fine too; killed after, it must be settled
      const rec = app.catalog.listBackups().find((b) => b.name === name);
      if (outcome === 'finished') t.is(rec?.status, 'available');
      if (rec?.status === 'error') t.regex(rec.fail_reason!, /interrupted/);
      // give GC something to do: delete the oldest available backup every other round
      const avail = app.catalog.listBackups().filter((b) => b.status === 'available');
      if (round % 2 === 1 && avail.length > 2) await deleteBackup(app, avail[0]!.id);
    } finally {
      await app.close();
    }
    const gcOutcome = await runAndKill(dataDir, ['repo', 'gc'], 120 + Math.floor(Math.random() * 500));
    if (gcOutcome === 'killed') kills++;
    const app2 = await Appliance.open(loadConfig(dataDir));
    try {
      t.deepEqual(await checkInvariants(app2), [], `after gc round ${round} (${gcOutcome})`);
    } finally {
      await app2.close();
    }
  }
  // a last backup runs to the end, on top of whatever the rounds left
  expected.set('final', sha(data));
  t.is(await runAndKill(dataDir, ['backup', 'create', 'vol', '--name', 'final'], 120_000), 'finished');
  // everything that survived restores bit-exact after a final, uninterrupted GC
  const app = await Appliance.open(loadConfig(dataDir));
  t.teardown(() => app.close());
  const { collectGarbage } = await import('../gateway/engine/gc.js');
  await collectGarbage(app);
  const survivors = app.catalog.listBackups().filter((b) => b.status === 'available');
  t.true(survivors.length > 0);
  for (const b of survivors) t.is(sha(await restoreToBuffer(app, b.id)), expected.get(b.name)!, `restore of ${b.name}`);
  t.log(`${kills} processes killed mid-way, ${survivors.length} backups survived`);
  t.true(kills > 0, 'at least some kills landed mid-operation');
});
