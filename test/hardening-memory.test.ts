/**
 * Hardening, memory of a backup: the objects a backup has written but not yet indexed are
 * committed in bounded batches (sync, then index), so what the sink holds does not grow with
 * the volume; a backup that fails after some batches leaves indexed objects that no manifest
 * names, and GC removes them.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { ChunkSink } from '../gateway/engine/chunk-sink.js';
import { runBackup, startBackup } from '../gateway/engine/backup.js';
import { collectGarbage } from '../gateway/engine/gc.js';
import { openApp, sha } from './helpers/core.js';
import { backup, restoreToBuffer, volumeFrom } from './helpers/engine.js';

const CS = 64 * 1024;

test.serial('a backup of 256 new chunks holds at most one commit batch of unindexed objects', async (t) => {
  const app = await openApp(t, { chunkSize: CS });
  const data = randomBytes(256 * CS);
  await volumeFrom(app, 'v', data);
  const before = ChunkSink.commitEvery;
  ChunkSink.commitEvery = 16;
  let peak = 0;
  const orig = ChunkSink.prototype.finish;
  ChunkSink.prototype.finish = async function (this: ChunkSink) {
    const root = await orig.call(this);
    peak = this.peakUnindexed;
    return root;
  };
  try {
    const b = await backup(app, 'v');
    t.is(b.new_chunks, 256);
    t.true(peak > 0 && peak <= 16 + app.config.pipelineDepth + 1, `peak ${peak} unindexed objects`);
    t.is(app.catalog.chunks.getCount(), 256);
    t.is(sha(await restoreToBuffer(app, b.id)), sha(data));
  } finally {
    ChunkSink.commitEvery = before;
    ChunkSink.prototype.finish = orig;
  }
});

test.serial('a backup that fails after some commit batches leaves only objects GC removes', async (t) => {
  const app = await openApp(t, { chunkSize: CS });
  const data = randomBytes(128 * CS);
  await volumeFrom(app, 'v', data);
  const before = ChunkSink.commitEvery;
  ChunkSink.commitEvery = 16;
  try {
    const rec = await startBackup(app, { volume: 'v' });
    const dev = {
      size: data.length,
      async read(off: number, len: number) {
        if (off >= 100 * CS) throw new Error('the volume went away');
        return data.subarray(off, off + len);
      },
    };
    await t.throwsAsync(runBackup(app, rec, undefined, dev as never), { message: /went away/ });
    t.is(app.catalog.backups.get(rec.id)!.status, 'error');
    t.true(app.catalog.chunks.getCount() >= 64, 'earlier batches were indexed');
    const gc = await collectGarbage(app);
    t.true(gc.removedChunks >= 64);
    t.is(app.catalog.chunks.getCount(), 0, 'no index entry is left for objects nothing names');
    const ok = await backup(app, 'v');
    t.is(sha(await restoreToBuffer(app, ok.id)), sha(data));
  } finally {
    ChunkSink.commitEvery = before;
  }
});
