/** Two (or more) appliances on one repository, for the repository-as-truth suites. */
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { Appliance } from '../../gateway/appliance.js';
import { loadConfig, type RepoDriverConfig } from '../../gateway/config.js';
import { cli } from './core.js';

export const CS = 64 * 1024;

/** Data dirs `names` all attached to `repository` (created by the first). */
export function sharedDataDirs(root: string, repository: RepoDriverConfig, names: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const n of names) {
    const d = path.join(root, n);
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, 'blockgate.json'), JSON.stringify({ chunkSize: CS, codec: 'zstd', repository }), { mode: 0o600 });
    out[n] = d;
  }
  return out;
}

export async function openAt(t: ExecutionContext, dataDir: string): Promise<Appliance> {
  const app = await Appliance.open(loadConfig(dataDir));
  t.teardown(() => app.close());
  return app;
}

/** Exports a backup on one data dir and imports it on another, through the CLI. */
export async function carryRecord(from: string, to: string, ref: string): Promise<{ code: number; stderr: string }> {
  const ex = await cli(from, ['-f', 'json', 'backup', 'export', ref]);
  if (ex.code !== 0) return ex;
  const { backup_service, backup_url } = JSON.parse(ex.stdout) as { backup_service: string; backup_url: string };
  return cli(to, ['-f', 'json', 'backup', 'import', backup_service, backup_url]);
}
