/**
 * `npm run bench`: blockgate against its peers on this machine, in one run. Prints a table
 * and the ratios DESIGN.md sets as targets, and writes them to .bench/results.json.
 * BENCH_SIZE_MIB sets the image size (default 2048), BENCH_DIR the scratch directory,
 * BENCH_QUICK=1 one round and smaller counts (suite repo-scale).
 */
import fs from 'node:fs';
import path from 'node:path';
import { benchCore, type Row } from './core.js';
import { benchNbd } from './nbd.js';
import { benchFuse } from './fuse.js';
import { benchInstant } from './instant.js';
import { benchRbd } from './rbd.js';
import { benchEncryption } from './encryption.js';
import { benchMemory } from './memory.js';
import { SUITE as REPO_SCALE, type ScaleRow, benchRepo } from './repo.js';
import { ROUNDS, machine } from './stats.js';
import { benchPacks, packsNotes } from './packs.js';
import { benchEvents } from './events.js';
import { benchApi } from './api.js';

const work = path.resolve(process.env.BENCH_DIR ?? '.bench');
const sizeMiB = Number(process.env.BENCH_SIZE_MIB ?? 2048);
fs.mkdirSync(work, { recursive: true, mode: 0o700 });
const host = machine();
console.error(`bench: ${host.cores} cores (${host.cpu}), ${host.memGiB} GiB, Linux ${host.kernel}; ${ROUNDS} interleaved round(s) per comparison`);

const suites: Record<string, (work: string, sizeMiB: number) => Promise<Row[]>> = {
  backup: benchCore,
  nbd: benchNbd,
  fuse: benchFuse,
  instant: benchInstant,
  rbd: benchRbd,
  [REPO_SCALE]: benchRepo,
  encryption: benchEncryption,
  memory: (work) => benchMemory(work),
  packs: benchPacks,
  events: (work) => benchEvents(work),
  api: benchApi,
};
const only = process.argv.slice(2);
const rows: Row[] = [];
const failed: string[] = [];
for (const [name, run] of Object.entries(suites)) {
  if (only.length && !only.includes(name)) continue;
  try {
    const got = await run(work, sizeMiB);
    rows.push(...got);
    for (const r of got) console.error(`bench: ${r.suite} ${r.tool} ${r.op}: ${r.seconds.toFixed(2)} s, ${r.mbps ? `${r.mbps.toFixed(1)} MB/s` : '-'}, ${r.rssMiB.toFixed(0)} MiB`);
  } catch (e) {
    // one suite failing (a peer missing, a server that would not start) does not lose the others
    failed.push(`${name}: ${(e as Error).message}`);
    console.error(`bench: suite ${name} failed: ${(e as Error).stack}`);
  }
}

const pad = (s: string, n: number) => s.padEnd(n);
const mbpsCell = (r: Row) => (r.mbps ? r.mbps.toFixed(1) : '-'); // 0: not a throughput (gc, rebuild)
const spreadCell = (r: Row) => (r.min !== undefined && r.max !== undefined && (r.runs ?? 1) > 1 ? `${r.min.toFixed(1)}–${r.max.toFixed(1)}` : '');
const storedCell = (r: Row) => (r.storedBytes !== undefined ? (r.storedBytes / 1024 ** 2).toFixed(1) : '');
console.log(`\nmachine: ${host.cores} cores, ${host.cpu}, ${host.memGiB} GiB, Linux ${host.kernel}`);
console.log(`${pad('suite', 10)} ${pad('tool', 12)} ${pad('operation', 24)} ${'seconds'.padStart(8)} ${'MB/s'.padStart(9)} ${'[min–max]'.padStart(15)} ${'stored MiB'.padStart(11)} ${'peak RSS MiB'.padStart(13)}`);
for (const r of rows) {
  console.log(`${pad(r.suite, 10)} ${pad(r.tool, 12)} ${pad(r.op, 24)} ${r.seconds.toFixed(2).padStart(8)} ${mbpsCell(r).padStart(9)} ${spreadCell(r).padStart(15)} ${storedCell(r).padStart(11)} ${r.rssMiB.toFixed(0).padStart(13)}`);
}
console.log('(medians of interleaved rounds; MB/s of IOPS rows is IOPS; restores are timed to durable, sync included)');
const get = (tool: string, op: string, suite?: string) => rows.find((r) => r.tool === tool && r.op === op && (!suite || r.suite === suite));
const ratio = (a?: Row, b?: Row) => (a && b ? (a.mbps / b.mbps).toFixed(2) : 'n/a');
const ratios: Record<string, string> = {
  'full backup vs restic (target >= 3)': ratio(get('blockgate', 'full backup'), get('restic', 'full backup')),
  'full backup vs borg fixed 4M (target >= 1.5)': ratio(get('blockgate', 'full backup'), get('borg', 'full backup')),
  'restore to durable vs restic (target >= 2)': ratio(get('blockgate', 'restore'), get('restic', 'restore')),
  'restore vs borg': ratio(get('blockgate', 'restore'), get('borg', 'restore')),
  'incremental 5% vs full (file volume, no change source)': ratio(get('blockgate', 'incremental 5%'), get('blockgate', 'full backup')),
};
const nbdRatio = (op: string, peer: string) => ratio(get('blockgate', op), get(peer, op));
ratios['nbdcopy cached vs nbdkit file (target >= 0.8)'] = nbdRatio('nbdcopy cached', 'nbdkit-file');
ratios['nbdcopy first read vs nbdkit file (target >= 0.7)'] = nbdRatio('nbdcopy first read', 'nbdkit-file');
ratios['nbdcopy cached vs qemu-nbd'] = nbdRatio('nbdcopy cached', 'qemu-nbd');
ratios['fio randread 4k IOPS vs nbdkit file'] = nbdRatio('fio randread 4k IOPS', 'nbdkit-file');
ratios['FUSE dd first read vs restic mount (target >= 2)'] = ratio(get('blockgate', 'dd first read', 'fuse'), get('restic', 'dd first read', 'fuse'));
ratios['FUSE dd cached vs restic mount (target >= 2)'] = ratio(get('blockgate', 'dd cached', 'fuse'), get('restic', 'dd cached', 'fuse'));
const att1 = rows.find((r) => r.suite === 'instant' && r.op === 'attach 1 GiB (CLI+nbdinfo)');
const att64 = rows.find((r) => r.suite === 'instant' && r.op === 'attach 64 GiB (CLI+nbdinfo)');
if (att1 && att64) ratios['instant attach seconds 1 GiB / 64 GiB (target < 1 s each)'] = `${att1.seconds.toFixed(3)} / ${att64.seconds.toFixed(3)}`;
ratios['hydration vs plain restore (target >= 0.9)'] = ratio(get('blockgate', 'hydrate (instant)', 'instant'), get('blockgate', 'restore (plain)', 'instant'));
const apiCreate = get('blockgate', 'backup-create p50 (16 clients)', 'api');
const apiCreate99 = get('blockgate', 'backup-create p99 (16 clients)', 'api');
const apiList = get('blockgate', 'backup-list p50 (16 clients)', 'api');
const apiList99 = get('blockgate', 'backup-list p99 (16 clients)', 'api');
if (apiCreate && apiCreate99) ratios['API backup-create ms at 16 clients, median / p99 (target median < 50)'] = `${(apiCreate.seconds * 1000).toFixed(1)} / ${(apiCreate99.seconds * 1000).toFixed(1)}`;
if (apiList && apiList99) ratios['API backup-list ms at 16 clients, median / p99'] = `${(apiList.seconds * 1000).toFixed(1)} / ${(apiList99.seconds * 1000).toFixed(1)}`;
const af = get('blockgate', 'rbd full backup (API)', 'api');
const ai = get('blockgate', 'rbd incremental 5% (API)', 'api');
if (af && ai) ratios['RBD 5% incremental vs full through the API, by time (target >= 20)'] = (af.seconds / ai.seconds).toFixed(1);
const rf = get('blockgate', 'rbd full backup', 'rbd');
const ri = get('blockgate', 'rbd incremental 5%', 'rbd');
if (rf && ri) ratios['RBD 5% incremental speed-up vs full, by time (target >= 20)'] = (rf.seconds / ri.seconds).toFixed(1);
ratios['S3 repo vs dir repo, full backup'] = ratio(get('blockgate s3 repo', 'full backup', 'repo'), get('blockgate dir repo', 'full backup', 'repo'));
const stored = (tool: string, op: string) => get(tool, op, 'backup')?.storedBytes;
const sb0 = stored('blockgate', 'full backup');
const sborg = stored('borg', 'full backup');
if (sb0 !== undefined && sborg !== undefined) ratios['stored bytes of the full backup vs borg (target <= 1)'] = (sb0 / sborg).toFixed(2);
const r1 = get('blockgate', 'full backup 1 GiB');
const r8 = get('blockgate', 'full backup 8 GiB');
if (r1 && r8) ratios['peak RSS 8 GiB / 1 GiB (flat = 1)'] = (r8.rssMiB / r1.rssMiB).toFixed(2);
// repository scale (issue 9): medians of interleaved rounds, [min–max]
const scale = (key: ScaleRow['key']) => rows.find((r) => r.suite === REPO_SCALE && (r as ScaleRow).key === key) as ScaleRow | undefined;
const spread = (r: ScaleRow, f: (seconds: number) => number = (s) => s, digits = 2) => {
  const [lo, hi] = [f(r.min), f(r.max)].sort((a, b) => a - b);
  return `${f(r.seconds).toFixed(digits)} [${lo!.toFixed(digits)}–${hi!.toFixed(digits)}]`;
};
const sv = scale('verify');
const sr = scale('restore');
if (sv && sr) {
  ratios['verify vs restore (target >= 1)'] = ratio(sv, sr);
  const mbps = (r: ScaleRow) => (s: number) => (r.mbps * r.seconds) / s; // same bytes each round
  ratios['verify / restore (to durable) MB/s (median [min–max])'] = `${spread(sv, mbps(sv), 1)} / ${spread(sr, mbps(sr), 1)}`;
}
const su = scale('startup');
if (su) ratios['CLI start-up alone, seconds (part of every repo-scale figure)'] = spread(su);
const sg = scale('gc');
if (sg) ratios[`gc of ${sg.backups} backups, seconds (median [min–max])`] = spread(sg);
const sgd = scale('gc-after-delete');
if (sgd) ratios[`gc after deleting ${sgd.backups} of them, seconds (one round)`] = sgd.seconds.toFixed(2);
const sb = scale('rebuild');
if (sb) ratios[`rebuild of ${sb.backups} backups, seconds (median [min–max])`] = spread(sb);
for (const op of ['full backup', 'restore', 'nbdcopy first read']) {
  const e = get('blockgate encrypted', op, 'encryption');
  const p = get('blockgate plain', op, 'encryption');
  if (e && p) ratios[`encrypted vs plain, ${op} (target >= 0.9)`] = ratio(e, p);
}
const m1 = get('blockgate', 'backup 64K chunks 1 GiB', 'memory');
const m64 = get('blockgate', 'backup 64K chunks 64 GiB', 'memory');
if (m1 && m64) ratios['peak RSS 64 GiB / 1 GiB at 64K chunks (target <= 1.1)'] = (m64.rssMiB / m1.rssMiB).toFixed(2);
// packs (issue 16): small blocks in packs against 4 MiB chunk objects
const packed = 'blockgate packed 16K';
const loose = 'blockgate 4M chunks';
for (const op of ['full backup', 'restore', 'nbdcopy first read', 'nbdcopy cached', 'fio randread 4k cold IOPS']) {
  const a = get(packed, op, 'packs');
  const b = get(loose, op, 'packs');
  if (a && b) ratios[`packed 16K vs 4M chunks, ${op}${op.startsWith('fio') ? ' (target >= 3)' : ' (target >= 1)'}`] = ratio(a, b);
}
const si = get(packed, 'scattered incremental', 'packs');
const sl = get(loose, 'scattered incremental', 'packs');
if (si?.storedBytes !== undefined && sl?.storedBytes !== undefined) {
  const cinder = Number(packsNotes['Cinder 32 KiB blocks would store (touched blocks, zstd)']);
  ratios['scattered incremental stored, packed 16K / Cinder 32K bound (target <= 1)'] = (si.storedBytes / cinder).toFixed(3);
  ratios['scattered incremental stored, packed 16K / 4M chunks (target <= 0.1)'] = (si.storedBytes / sl.storedBytes).toFixed(4);
}
for (const [k, v] of Object.entries(packsNotes)) if (k.includes('objects')) ratios[`packs: ${k}`] = v;
console.log('\nratios (blockgate / peer, throughput):');
for (const [k, v] of Object.entries(ratios)) console.log(`  ${k}: ${v}`);
fs.writeFileSync(path.join(work, 'results.json'), JSON.stringify({ date: new Date().toISOString(), machine: host, rounds: ROUNDS, sizeMiB, rows, ratios, failed }, null, 2), { mode: 0o600 });
if (failed.length) {
  console.log(`\nsuites that failed:\n  ${failed.join('\n  ')}`);
  process.exitCode = 1;
}
