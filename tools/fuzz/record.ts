/** Fuzz target: gateway/engine/records-io.ts parseRecord (an exported record: service + base64 URL). */
import { createHash } from 'node:crypto';
import { parseRecord, RecordError } from '../../gateway/engine/records-io.js';
import { checkError, invariant, type Target } from './engine.js';
import { mutateJson } from './json-mutate.js';
import { sampleBackup, sampleManifest } from './manifest.js';

/** input: service, a newline, then the backup_url */
function encode(service: string, url: string): Buffer {
  return Buffer.from(`${service}\n${url}`);
}
function decode(input: Buffer): { service: string; url: string } {
  const s = input.toString('utf8');
  const nl = s.indexOf('\n');
  return nl < 0 ? { service: s, url: '' } : { service: s.slice(0, nl), url: s.slice(nl + 1) };
}

function sampleRecord(i: number, service = 'blockgate.dir'): Buffer {
  const b = sampleBackup(i, 256);
  const rec = {
    id: b.id, display_name: b.name, display_description: b.description, volume_id: b.volume_id, snapshot_id: b.snapshot_id,
    parent_id: b.parent_id, is_incremental: b.is_incremental, size: b.size, size_bytes: b.size_bytes, object_count: b.object_count,
    container: b.container, service, project_id: b.project_id, user_id: b.user_id, availability_zone: b.availability_zone,
    created_at: b.created_at, updated_at: b.updated_at, data_timestamp: b.data_timestamp, status: b.status, chunk_size: b.chunk_size,
    codec: b.codec, repository_id: 'repo-0123', manifest: `manifests/${b.id}.json`,
    manifest_sha256: createHash('sha256').update(sampleManifest(i, 256)).digest('hex'), service_metadata: { volume_name: b.volume_name, format: 1 },
  };
  return encode(service, Buffer.from(JSON.stringify(rec)).toString('base64'));
}

export const recordTarget: Target = {
  name: 'record',
  description: 'gateway/engine/records-io.ts parseRecord: exported records (backup_service, backup_url)',
  coverage: ['/gateway/engine/records-io.'],
  maxLen: 64 * 1024,
  maxAlloc: 1024 * 1024,
  seeds: () => [sampleRecord(1), sampleRecord(2, 'blockgate.s3'), encode('blockgate.dir', ''), encode('cinder.backup.drivers.swift', 'e30=')],
  dictionary: ['blockgate.', '\n', '=', '==', 'e30=', 'W10=', 'bnVsbA==', '+/', ' '].map((s) => Buffer.from(s)),
  mutate(input, r) {
    const { service, url } = decode(input);
    if (r.chance(0.1)) return encode(r.pick(['blockgate.dir', 'blockgate.s3', 'blockgate.', 'blockgate.DIR', 'x'.repeat(100), '']), url);
    let v: unknown;
    try {
      v = JSON.parse(Buffer.from(url.trim(), 'base64').toString('utf8'));
    } catch {
      return null;
    }
    const m = mutateJson(v as never, r);
    let b64 = Buffer.from(JSON.stringify(m) ?? '').toString('base64');
    if (r.chance(0.1)) b64 = r.chance(0.5) ? b64.replace(/=+$/, '') : ` ${b64}\n`;
    return encode(service, b64);
  },
  run(input) {
    const { service, url } = decode(input);
    let rec: Record<string, unknown>;
    try {
      rec = parseRecord(service, url);
    } catch (e) {
      checkError(e, (x) => x instanceof RecordError, 'parseRecord');
      return 'RecordError';
    }
    invariant(typeof rec.id === 'string' && rec.manifest === `manifests/${rec.id}.json`, 'a parsed record names its own manifest');
    return 'ok';
  },
};
