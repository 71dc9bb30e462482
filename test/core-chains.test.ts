import test from 'ava';
import { collectGarbage } from '../gateway/engine/gc.js';
import { deleteBackup } from '../gateway/engine/delete.js';
import { mixedContent, mutate, openApp, sha } from './helpers/core.js';
import { backup, restoreToBuffer, rewrite, volumeFrom } from './helpers/engine.js';

const CS = 64 * 1024;
const SCENARIOS = 52;

test(`${SCENARIOS} random chains of full/incremental/delete/restore/gc: every surviving backup restores bit-exact`, async (t) => {
  t.timeout(10 * 60_000);
  const app = await openApp(t);
  let ops = 0;
  for (let s = 0; s < SCENARIOS; s++) {
    const vol = `v${s}`;
    // sizes that are not multiples of the chunk size, and some that span several map pages
    const size = Math.floor(CS * (1 + Math.random() * 24)) + (s % 3 === 0 ? 0 : 777);
    let data = mixedContent(size, CS);
    await volumeFrom(app, vol, data);
    const expected = new Map<string, string>();
    const steps = 6 + Math.floor(Math.random() * 6);
    for (let k = 0; k < steps; k++, ops++) {
      const r = Math.random();
      const alive = [...expected.keys()];
      if (r < 0.45 || alive.length === 0) {
        data = Buffer.from(data);
        mutate(data, CS, 1 + Math.floor(Math.random() * 3));
        if (Math.random() < 0.2) data.fill(0, 0, Math.min(data.length, CS * 2)); // new holes
        rewrite(app, vol, data);
        const incremental = alive.length > 0 && Math.random() < 0.7;
        const b = await backup(app, vol, { incremental });
        t.is(b.is_incremental, incremental);
        expected.set(b.id, sha(data));
      } else if (r < 0.7) {
        const victim = alive[Math.floor(Math.random() * alive.length)]!;
        await deleteBackup(app, victim);
        expected.delete(victim);
      } else if (r < 0.8) {
        await collectGarbage(app);
      } else {
        const pick = alive[Math.floor(Math.random() * alive.length)]!;
        t.is(sha(await restoreToBuffer(app, pick)), expected.get(pick)!, `scenario ${s}: restore of ${pick}`);
      }
    }
    if (s % 5 === 0) await collectGarbage(app);
    for (const [id, digest] of expected) t.is(sha(await restoreToBuffer(app, id)), digest, `scenario ${s}: final restore of ${id}`);
    // drop the restored volumes' files as we go to keep the disk small
    for (const v of app.catalog.listVolumes()) if (v.managed) await import('../gateway/engine/volumes.js').then((m) => m.deleteVolume(app, v.id));
  }
  t.log(`${ops} operations over ${SCENARIOS} scenarios`);
  t.true(ops >= SCENARIOS * 6);
  // and the repository holds nothing unreferenced after a final gc
  const gc = await collectGarbage(app);
  t.is(gc.liveChunks, app.catalog.chunks.getCount());
});
