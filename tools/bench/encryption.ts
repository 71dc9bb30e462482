/**
 * Encryption benchmark: the bench image backed up, restored (to durable) and read over NBD
 * the first time (`nbdcopy` to null:, cold chunk cache) from an encrypted repository and from
 * a plain one, interleaved A B A B A B, cleanup outside the timing; median, min and max of
 * each, and the ratio encrypted / plain (DESIGN.md's target: at least 0.9 for each).
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { CLI, type Row } from './core.js';
import { ROUNDS, median } from './stats.js';
import { makeFsImage } from './image.js';
import { measure, sh, warmCache } from './run.js';
import { stop, waitPort } from './nbd.js';

const PASS = 'bench passphrase';

export async function benchEncryption(work: string, sizeMiB: number): Promise<Row[]> {
  const img = path.join(work, 'volume.img');
  if (!fs.existsSync(img) || fs.statSync(img).size !== sizeMiB * 1024 * 1024) makeFsImage(img, sizeMiB, work);
  const bytes = fs.statSync(img).size;
  const env = { BLOCKGATE_PASSPHRASE: PASS };
  const kinds = [
    { tool: 'blockgate encrypted', encrypt: true, port: 10880 },
    { tool: 'blockgate plain', encrypt: false, port: 10881 },
  ];
  const times: Record<string, Record<string, number[]>> = {};
  const rss: Record<string, Record<string, number>> = {};
  const note = (tool: string, op: string, s: number, r = 0) => {
    ((times[tool] ??= {})[op] ??= []).push(s);
    (rss[tool] ??= {})[op] = Math.max(rss[tool]![op] ?? 0, r);
  };
  for (let round = 0; round < ROUNDS; round++) {
    for (const k of kinds) {
      const data = path.join(work, `bg-enc-${k.encrypt ? 'on' : 'off'}`);
      fs.rmSync(data, { recursive: true, force: true });
      const bg = (args: string[]) => measure(process.execPath, [CLI, '--data-dir', data, ...args], env);
      await bg(['repo', 'create', '--driver', 'dir', '--path', path.join(data, 'repo'), ...(k.encrypt ? ['--encrypt'] : [])]);
      await bg(['volume', 'create', '--name', 'vol', '--file', img]);
      warmCache(img);
      const b = await bg(['backup', 'create', 'vol', '--name', 'b']);
      note(k.tool, 'full backup', b.seconds, b.rssMiB);
      const start = process.hrtime.bigint();
      const r = await bg(['backup', 'restore', 'b', '--name', 'restored']);
      await sh('sync', []);
      note(k.tool, 'restore', Number(process.hrtime.bigint() - start) / 1e9, r.rssMiB);
      const server = spawn(process.execPath, [CLI, '--data-dir', data, 'serve', '--nbd-port', String(k.port), '--nbd-socket', ''], { stdio: 'ignore', env: { ...process.env, ...env } });
      try {
        const uri = `nbd://127.0.0.1:${k.port}/vol@b`;
        await waitPort(uri);
        const m = await measure('nbdcopy', ['--requests=64', uri, 'null:']);
        note(k.tool, 'nbdcopy first read', m.seconds);
      } finally {
        await stop(server);
      }
      fs.rmSync(data, { recursive: true, force: true });
    }
  }
  const rows: Row[] = [];
  for (const k of kinds) {
    for (const [op, xs] of Object.entries(times[k.tool]!)) {
      const s = median(xs);
      rows.push({ suite: 'encryption', tool: k.tool, op, seconds: s, mbps: bytes / 1e6 / s, rssMiB: rss[k.tool]![op] ?? 0 });
      console.error(`bench: encryption ${k.tool} ${op}: median ${s.toFixed(2)} s [${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}] over ${xs.length} rounds`);
    }
  }
  return rows;
}
