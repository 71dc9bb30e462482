/**
 * Durability order of the directory store, proved on a model of a disk with a volatile
 * cache (test/helpers/powercut.ts): three backups run at once into one repository (their
 * volumes share chunks, so they race to write the same objects), and the power is cut at a
 * random instant. Whatever the catalog holds as `available` at that instant must name only
 * chunks, pages and a manifest that certainly survive whole. 200 runs. The same check
 * against a disk that loses chunk flushes must catch it (the test can fail), and an
 * fdatasync error must fail the backup.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { pageChunkDigests, rootDigests } from '../catalog/blockmap.js';
import { Appliance, registerStoreDriver } from '../gateway/appliance.js';
import { loadConfig } from '../gateway/config.js';
import { DirStore } from '../drivers/store/dir.js';
import { type PowerCutOptions, PowerCutOps } from './helpers/powercut.js';
import { tmpDir } from './helpers/core.js';
import { backup, volumeFrom } from './helpers/engine.js';

const CS = 64 * 1024;
const RUNS = 200;

let model: PowerCutOps | null = null;
let modelOpts: PowerCutOptions = {};
registerStoreDriver('powercut', async (cfg) => {
  model = new PowerCutOps((cfg as unknown as { path: string }).path, modelOpts);
  return new DirStore((cfg as unknown as { path: string }).path, model);
});

async function openModelApp(t: ExecutionContext): Promise<Appliance> {
  const dataDir = path.join(tmpDir(t), 'data');
  fs.mkdirSync(path.join(dataDir, 'repo'), { recursive: true });
  fs.writeFileSync(path.join(dataDir, 'blockgate.json'), JSON.stringify({ chunkSize: CS, codec: 'lz4', workers: 1, repository: { driver: 'powercut', path: path.join(dataDir, 'repo') } }));
  return Appliance.open(loadConfig(dataDir));
}

/** What the `available` backups among `ids` name that a power cut now could lose or tear. */
function violationsAt(app: Appliance, ids: Set<string>): string[] {
  const state = model!.cut();
  const root = model!.root;
  const out: string[] = [];
  for (const id of ids) {
    const b = app.catalog.backups.get(id);
    if (b?.status !== 'available') continue;
    const need = [`manifests/${b.id}.json`];
    for (const pd of rootDigests(app.catalog.mapRoot(b.id))) {
      need.push(`pages/${pd.slice(0, 2)}/${pd}`);
      for (const cd of pageChunkDigests(app.catalog.loadPage(pd))) need.push(`chunks/${cd.slice(0, 2)}/${cd}`);
    }
    for (const n of need) {
      const s = state(path.join(root, n));
      if (s !== 'whole') out.push(`${b.name}: ${n} ${s}`);
    }
  }
  return out;
}

/** Three backups at once of fresh volumes that share chunks, sampled by power cuts at random instants. */
async function oneRun(app: Appliance, run: number): Promise<{ violations: string[]; available: number }> {
  const shared = Array.from({ length: 4 }, () => randomBytes(CS));
  const vols = ['a', 'b', 'c'].map((x) => `${x}${run}`);
  for (const [k, v] of vols.entries()) {
    const parts = Array.from({ length: 6 }, (_, i) => ((i + k + run) % 3 === 0 ? randomBytes(CS) : shared[(i + run) % shared.length]!));
    await volumeFrom(app, v, Buffer.concat(parts));
  }
  const ids = new Set<string>();
  let violations: string[] = [];
  let stop = false;
  const sampler = (async () => {
    while (!stop) {
      await new Promise((r) => setTimeout(r, Math.random() * 3));
      for (const b of app.catalog.listBackups()) if (vols.includes(b.volume_name)) ids.add(b.id);
      const v = violationsAt(app, ids);
      if (v.length) violations = v;
    }
  })();
  await Promise.allSettled(vols.map((v) => backup(app, v)));
  stop = true;
  await sampler;
  for (const b of app.catalog.listBackups()) if (vols.includes(b.volume_name)) ids.add(b.id);
  const final = violationsAt(app, ids);
  if (final.length) violations = final;
  const available = [...ids].filter((id) => app.catalog.backups.get(id)?.status === 'available').length;
  return { violations, available };
}

test.serial(`power cut at random instants during 3 concurrent backups: no available backup names a lost or torn object (${RUNS} runs)`, async (t) => {
  t.timeout(10 * 60_000);
  modelOpts = {};
  const app = await openModelApp(t);
  try {
    let committed = 0;
    for (let run = 0; run < RUNS; run++) {
      const r = await oneRun(app, run);
      t.deepEqual(r.violations, [], `run ${run}`);
      if (r.violations.length) break;
      committed += r.available;
    }
    t.is(committed, RUNS * 3, 'every backup committed in the end');
  } finally {
    await app.close();
  }
});

test.serial('the check catches a disk whose fdatasync of chunks does nothing', async (t) => {
  modelOpts = { ignoreDatasync: /\/chunks\// };
  const app = await openModelApp(t);
  try {
    const r = await oneRun(app, 0);
    t.true(r.violations.length > 0, 'the lost flush is detected');
    t.regex(r.violations[0]!, /chunks\/.* maybe torn/);
  } finally {
    modelOpts = {};
    await app.close();
  }
});

test.serial('an fdatasync error fails the backup: it is never available and names nothing', async (t) => {
  modelOpts = { failDatasync: /\/chunks\// };
  const app = await openModelApp(t);
  try {
    await volumeFrom(app, 'v', randomBytes(4 * CS));
    const err = await t.throwsAsync(backup(app, 'v'));
    t.regex(err!.message, /EIO/);
    const b = app.catalog.listBackups()[0]!;
    t.is(b.status, 'error');
    t.is(app.catalog.chunks.getCount(), 0, 'no chunk was indexed');
  } finally {
    modelOpts = {};
    await app.close();
  }
});
