/** Fuzz target: catalog/manifest.ts decodeManifest (the JSON manifest of a backup). */
import { decodeManifest, encodeManifest } from '../../catalog/manifest.js';
import type { BackupRecord, VolumeRecord } from '../../catalog/records.js';
import { checkError, invariant, type Target } from './engine.js';
import { mutateJsonText } from './json-mutate.js';

export function sampleBackup(i: number, chunks: number, chunkSize = 4 * 1024 * 1024): BackupRecord {
  const id = `0000000${i}-1111-4222-8333-444455556666`.slice(-36);
  return {
    id,
    name: `nightly-${i}`,
    description: 'before upgrade',
    volume_id: 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee',
    volume_name: 'db1',
    snapshot_id: null,
    parent_id: i > 1 ? '00000001-1111-4222-8333-444455556666' : null,
    is_incremental: i > 1,
    status: 'available',
    fail_reason: null,
    size: Math.ceil((chunks * chunkSize) / 2 ** 30),
    size_bytes: chunks * chunkSize - (i % 2) * 512,
    object_count: chunks,
    new_chunks: 1,
    new_bytes: 100,
    data_bytes: chunks * chunkSize,
    container: 'blockgate',
    project_id: 'p',
    user_id: 'u',
    availability_zone: 'nova',
    created_at: '2026-01-01T00:00:00.000Z',
    updated_at: '2026-01-01T00:00:00.000Z',
    data_timestamp: '2026-01-01T00:00:00.000Z',
    chunk_size: chunkSize,
    codec: 'zstd',
    owner: null,
    notes: [],
    change_token: null,
    bytes_read: 0,
  } as unknown as BackupRecord;
}

const volume = { id: 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee', name: 'db1', driver: 'file', size: 2 ** 30, path: '/dev/vg0/db1' } as unknown as VolumeRecord;

export function sampleManifest(i: number, chunks: number, chunkSize?: number): Buffer {
  const pages = Math.ceil(chunks / 512);
  const root = Buffer.alloc(32 * pages);
  for (let p = 0; p < pages; p++) root.fill(p + 1, p * 32, p * 32 + 32);
  return encodeManifest('repo-0123', sampleBackup(i, chunks, chunkSize), volume, root, i % 2 ? 'lease-token' : undefined);
}

export const manifestTarget: Target = {
  name: 'manifest',
  description: 'catalog/manifest.ts decodeManifest: JSON manifests from the repository',
  coverage: ['/catalog/manifest.', '/catalog/blockmap.'],
  maxLen: 64 * 1024,
  maxAlloc: 1024 * 1024,
  seeds: () => [sampleManifest(1, 256), sampleManifest(2, 1537, 65536), sampleManifest(3, 0), sampleManifest(4, 512)],
  dictionary: ['"kind"', '"blockgate-backup-manifest"', '"format"', '"map"', '"pages"', '"chunk_count"', '"backup"', '"volume"', '"id"', '"size_bytes"', '"chunk_size"', '"repository_id"', '{}', '[]', 'null', '"__proto__"', '{"toString":1}', '1e999', '-0', '9007199254740993'].map((s) => Buffer.from(s)),
  mutate(input, r) {
    const t = mutateJsonText(input.toString('utf8'), r);
    return t === null ? null : Buffer.from(t);
  },
  run(input) {
    let out: ReturnType<typeof decodeManifest>;
    try {
      out = decodeManifest(input, 'fuzz');
    } catch (e) {
      checkError(e, (x) => x.constructor === Error && x.message.startsWith('manifest fuzz'), 'decodeManifest');
      return 'Error';
    }
    const { manifest, root } = out;
    invariant(Array.isArray(manifest.map.pages) && root.length === 32 * manifest.map.pages.length, 'root is 32 bytes per page');
    invariant(typeof manifest.backup.id === 'string' && typeof manifest.repository_id === 'string', 'decoded manifest has its ids');
    return 'ok';
  },
};
