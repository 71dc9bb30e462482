/**
 * Ceph benchmark: full and 5%-incremental backup of an RBD image (`rbd export-diff` of
 * snapshots; target: the incremental at least 20x faster than the full), a restore into a new
 * RBD image by `rbd import-diff`, and full backup / restore throughput of the same image into
 * an S3 repository on radosgw vs a directory repository.
 *
 * It uses the cluster in CEPH_CONF (and S3_ENDPOINT / S3_ACCESS_KEY / S3_SECRET_KEY for the S3
 * part) when set; otherwise it starts its own with tools/ceph/ceph-up.sh under WORK and stops
 * it (tools/ceph/ceph-down.sh) at the end, whatever happens.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { RbdVolume } from '../../drivers/volume/rbd.js';
import { CLI, type Row } from './core.js';
import { makeFsImage } from './image.js';
import { dropCaches, measure, sh } from './run.js';

const CEPH_TOOLS = fileURLToPath(new URL('../../../tools/ceph/', import.meta.url));

interface Cluster {
  env: Record<string, string>;
  stop(): void;
}

function startCluster(work: string, sizeMiB: number): Cluster {
  if (process.env.CEPH_CONF) {
    const env: Record<string, string> = {};
    for (const k of ['CEPH_CONF', 'S3_ENDPOINT', 'S3_REGION', 'S3_ACCESS_KEY', 'S3_SECRET_KEY']) if (process.env[k]) env[k] = process.env[k]!;
    console.error(`bench rbd: using the cluster in CEPH_CONF=${env.CEPH_CONF}`);
    return { env, stop() {} };
  }
  const dir = path.join(work, 'ceph');
  // room for the image, its snapshots, two images restored, and the S3 repository
  const osdGiB = Math.max(10, Math.ceil((sizeMiB * 5) / 1024) + 4);
  console.error(`bench rbd: starting a Ceph cluster in ${dir} (OSD ${osdGiB}G)`);
  fs.rmSync(dir, { recursive: true, force: true });
  const r = spawnSync('bash', [path.join(CEPH_TOOLS, 'ceph-up.sh'), dir], {
    env: { ...process.env, CEPH_OSD_SIZE: `${osdGiB}G` },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let stopped = false;
  const onSignal = (sig: NodeJS.Signals) => {
    stop();
    process.kill(process.pid, sig);
  };
  const stop = () => {
    if (stopped) return;
    stopped = true;
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
    spawnSync('bash', [path.join(CEPH_TOOLS, 'ceph-down.sh'), dir], { stdio: 'inherit' });
  };
  // an interrupted bench still stops its cluster
  process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
  if (r.status !== 0) {
    stop();
    throw new Error(`tools/ceph/ceph-up.sh failed (exit ${r.status})`);
  }
  const env: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const m = /^export ([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (m) env[m[1]!] = m[2]!.replace(/^"(.*)"$/, '$1');
  }
  return { env, stop };
}

export async function benchRbd(work: string, sizeMiB: number): Promise<Row[]> {
  const rows: Row[] = [];
  const bytes = sizeMiB * 1024 * 1024;
  const cluster = startCluster(work, sizeMiB);
  const env = cluster.env;
  const conf = env.CEPH_CONF!;
  const tag = `${Date.now().toString(36)}${randomBytes(2).toString('hex')}`;
  const pool = (process.env.BENCH_RBD_POOL ?? 'volumes').trim();
  const spec = `${pool}/bench-${tag}`;
  const rbdEnv = { CEPH_CONF: conf };
  const images: string[] = [];
  try {
    const img = path.join(work, 'rbd-volume.img');
    console.error(`bench rbd: making a ${sizeMiB} MiB ext4 image and importing it as ${spec}`);
    makeFsImage(img, sizeMiB, work);
    await sh('rbd', ['import', '--no-progress', img, spec], rbdEnv);
    images.push(spec);

    // ------------------------------------------------------------ RBD: full, 5% incremental, restore
    const data = path.join(work, 'bg-rbd');
    fs.rmSync(data, { recursive: true, force: true });
    const bg = (d: string, args: string[], e: NodeJS.ProcessEnv = {}) => measure(process.execPath, [CLI, '--data-dir', d, ...args], { ...rbdEnv, ...e });
    const row = (suite: string, tool: string, op: string, m: { seconds: number; rssMiB: number }, moved = bytes) =>
      rows.push({ suite, tool, op, seconds: m.seconds, mbps: moved / 1e6 / m.seconds, rssMiB: m.rssMiB });
    await sh(process.execPath, [CLI, '--data-dir', data, 'volume', 'create', '--name', 'rv', '--rbd', spec, '--ceph-conf', conf], rbdEnv);
    console.error('bench rbd: full backup (export-diff of a snapshot)');
    dropCaches();
    row('rbd', 'blockgate', 'rbd full backup', await bg(data, ['backup', 'create', 'rv', '--name', 'full']));

    // ~5% of the 4 MiB blocks get 64 KiB of new data (as changeBlocks does to a file)
    const vol = new RbdVolume(spec, { conf });
    const dev = await vol.open('write');
    const block = 4 * 1024 * 1024;
    let changed = 0;
    try {
      for (let i = 0; i < Math.floor(bytes / block); i++) {
        if ((i * 2654435761) % 1000 < 50) {
          await dev.write(i * block + 8192, randomBytes(64 * 1024));
          changed++;
        }
      }
      await dev.flush();
    } finally {
      await dev.close();
    }
    console.error(`bench rbd: incremental backup after changing ${changed} of ${Math.floor(bytes / block)} blocks`);
    dropCaches();
    const inc = await bg(data, ['-f', 'json', 'backup', 'create', '--incremental', 'rv', '--name', 'inc']);
    row('rbd', 'blockgate', 'rbd incremental 5%', inc);
    const incRec = JSON.parse(inc.stdout) as { bytes_read: number; notes: string[] };
    console.error(`bench rbd: the incremental read ${incRec.bytes_read} bytes (${incRec.notes.join('; ')})`);

    const target = `${pool}/bench-${tag}-restored`;
    await sh(process.execPath, [CLI, '--data-dir', data, 'volume', 'create', '--name', 'dst', '--rbd', target, '--size', `${bytes}`, '--ceph-conf', conf], rbdEnv);
    images.push(target);
    console.error('bench rbd: restore into a new RBD image (import-diff)');
    dropCaches();
    row('rbd', 'blockgate', 'rbd restore (import-diff)', await bg(data, ['backup', 'restore', 'inc', 'dst']));

    // ------------------------------------------------------------ S3 vs directory repository
    if (env.S3_ENDPOINT && env.S3_ACCESS_KEY && env.S3_SECRET_KEY) {
      const dirData = path.join(work, 'bg-dirrepo');
      const s3Data = path.join(work, 'bg-s3repo');
      for (const d of [dirData, s3Data]) fs.rmSync(d, { recursive: true, force: true });
      const s3Env = { AWS_ACCESS_KEY_ID: env.S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY: env.S3_SECRET_KEY, AWS_REGION: env.S3_REGION ?? 'us-east-1' };
      await sh(process.execPath, [CLI, '--data-dir', s3Data, 'repo', 'create', '--driver', 's3', '--bucket', `bench-${tag}`, '--endpoint', env.S3_ENDPOINT], s3Env);
      for (const [tool, d, e] of [
        ['blockgate dir repo', dirData, {}],
        ['blockgate s3 repo', s3Data, s3Env],
      ] as const) {
        await sh(process.execPath, [CLI, '--data-dir', d, 'volume', 'create', '--name', 'v', '--file', img], e);
        console.error(`bench rbd: ${tool}: full backup and restore`);
        dropCaches();
        row('repo', tool, 'full backup', await bg(d, ['backup', 'create', 'v', '--name', 'full'], e));
        dropCaches();
        row('repo', tool, 'restore', await bg(d, ['backup', 'restore', 'full', '--name', `restored-${Date.now()}`], e));
        fs.rmSync(path.join(d, 'volumes'), { recursive: true, force: true });
      }
    } else {
      console.error('bench rbd: no S3 endpoint (S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY): S3 vs directory skipped');
    }
    fs.rmSync(img, { force: true });
  } finally {
    if (process.env.CEPH_CONF) {
      // a cluster we did not start: remove what we made in it
      for (const s of images.reverse()) {
        spawnSync('rbd', ['snap', 'purge', '--no-progress', s], { env: { ...process.env, ...rbdEnv }, stdio: 'ignore' });
        spawnSync('rbd', ['remove', '--no-progress', s], { env: { ...process.env, ...rbdEnv }, stdio: 'ignore' });
      }
    }
    cluster.stop();
  }
  const full = rows.find((r) => r.op === 'rbd full backup');
  const inc = rows.find((r) => r.op === 'rbd incremental 5%');
  if (full && inc) console.error(`bench rbd: incremental 5% vs full: ${(full.seconds / inc.seconds).toFixed(1)}x faster (target >= 20)`);
  return rows;
}

// `node dist/tools/bench/rbd.js` runs this suite alone
if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const work = path.resolve(process.env.BENCH_DIR ?? '.bench');
  fs.mkdirSync(work, { recursive: true, mode: 0o700 });
  const rows = await benchRbd(work, Number(process.env.BENCH_SIZE_MIB ?? 2048));
  for (const r of rows) console.log(`${r.suite.padEnd(6)} ${r.tool.padEnd(20)} ${r.op.padEnd(28)} ${r.seconds.toFixed(2).padStart(8)} s ${r.mbps.toFixed(1).padStart(8)} MB/s ${r.rssMiB.toFixed(0).padStart(6)} MiB`);
}
