/**
 * The namespace of the FUSE mount, built from the catalog:
 *
 *   volumes/<volume>/<backup>/disk.img      the whole volume as it was at the backup
 *   volumes/<volume>/<backup>/partN.img     partition N of it (MBR or GPT), when it has a table
 *   volumes/<volume>/<backup>/backup.json   the backup record (as `backup show -f json` gives it)
 *   volumes/<volume>/latest -> <backup>     the newest available backup
 *   by-id/<backup-id> -> ../volumes/<volume>/<backup>
 *
 * Only backups that can be read (available, or restoring) are listed. A backup's directory
 * is its name when that name is unique within the volume; otherwise the name plus the
 * backup time (`name@20261121T224404Z`), plus an id prefix if that still clashes. Names
 * never contain '/', NUL or control characters, and are never "." or "..".
 */
import type { BackupRecord, VolumeRecord } from '../../catalog/records.js';

export interface BackupNode {
  rec: BackupRecord;
  dirName: string;
  volume: VolumeNode;
  mtime: Date;
}

export interface VolumeNode {
  id: string;
  name: string;
  dirName: string;
  mtime: Date;
  /** in creation order */
  backups: Map<string, BackupNode>;
  /** dir name of the newest available backup */
  latest?: string;
}

export interface Snapshot {
  volumes: Map<string, VolumeNode>;
  byId: Map<string, BackupNode>;
  newest: Date;
}

export const READABLE: ReadonlySet<string> = new Set(['available', 'restoring']);
const RESERVED = new Set(['latest']);
const MAX_NAME_BYTES = 200;

/** Makes a string safe as one path component. */
export function safeName(s: string): string {
  // eslint-disable-next-line no-control-regex
  let out = s.replace(/[/\x00-\x1f\x7f]/g, '_');
  if (out === '' || out === '.' || out === '..') out = out.replace(/\./g, '_') || '_';
  if (Buffer.byteLength(out) > MAX_NAME_BYTES) {
    let cut = out;
    while (Buffer.byteLength(cut) > MAX_NAME_BYTES) cut = cut.slice(0, -1);
    out = cut;
  }
  return out;
}

/** "2026-11-21T22:44:04.123Z" -> "20261121T224404Z" */
export function compactTime(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return safeName(iso);
  return d.toISOString().replace(/\.\d+Z$/, 'Z').replace(/[-:]/g, '');
}

/**
 * Directory names for the backups of one volume (in creation order); unique, safe, and
 * the plain name whenever the name alone is unambiguous.
 */
export function backupDirNames(backups: BackupRecord[]): Map<string, string> {
  const base = new Map<string, string>();
  const count = new Map<string, number>();
  for (const b of backups) {
    const n = safeName(b.name ?? '');
    base.set(b.id, b.name ? n : '');
    if (b.name) count.set(n, (count.get(n) ?? 0) + 1);
  }
  const names = new Map<string, string>();
  for (const b of backups) {
    const n = base.get(b.id)!;
    if (n && count.get(n) === 1 && !RESERVED.has(n)) names.set(b.id, n);
    else names.set(b.id, safeName(n ? `${n}@${compactTime(b.created_at)}` : compactTime(b.created_at)));
  }
  // a derived name may still clash (same second, or a backup literally named "x@2026...")
  for (let round = 0; round < 2; round++) {
    const seen = new Map<string, number>();
    for (const v of names.values()) seen.set(v, (seen.get(v) ?? 0) + 1);
    let clashes = false;
    for (const b of backups) {
      const v = names.get(b.id)!;
      if (seen.get(v)! > 1 && !(round === 0 && v === base.get(b.id) && count.get(v) === 1)) {
        names.set(b.id, safeName(round === 0 ? `${v}-${b.id.slice(0, 8)}` : `${v}-${b.id}`));
        clashes = true;
      }
    }
    if (!clashes) break;
  }
  return names;
}

/** Builds the tree from catalog records; pure, so naming can be tested without a mount. */
export function buildSnapshot(volumes: VolumeRecord[], backups: BackupRecord[]): Snapshot {
  const readable = backups.filter((b) => READABLE.has(b.status));
  const vols = new Map<string, { id: string; name: string; created: string; recs: BackupRecord[] }>();
  for (const v of volumes) vols.set(v.id, { id: v.id, name: v.name, created: v.created_at, recs: [] });
  for (const b of readable) {
    let v = vols.get(b.volume_id);
    if (!v) {
      // the volume was deleted; its backups are still there, under the name it had
      v = { id: b.volume_id, name: b.volume_name || b.volume_id, created: b.created_at, recs: [] };
      vols.set(b.volume_id, v);
    }
    v.recs.push(b);
  }
  // volumes in the catalog keep their names; a deleted volume's backups take its old name
  // unless a volume has it now
  const live = new Set(volumes.map((v) => v.id));
  const taken = new Set<string>();
  const dirNames = new Map<string, string>();
  const byAge = (a: { created: string; id: string }, b: { created: string; id: string }) => a.created.localeCompare(b.created) || a.id.localeCompare(b.id);
  const all = [...vols.values()].sort(byAge);
  for (const v of [...all.filter((x) => live.has(x.id)), ...all.filter((x) => !live.has(x.id))]) {
    let name = safeName(v.name);
    if (taken.has(name)) name = safeName(`${v.name}@${v.id.slice(0, 8)}`);
    if (taken.has(name)) name = safeName(`${v.name}@${v.id}`);
    taken.add(name);
    dirNames.set(v.id, name);
  }
  const snap: Snapshot = { volumes: new Map(), byId: new Map(), newest: new Date(0) };
  for (const v of all) {
    const dirName = dirNames.get(v.id)!;
    const recs = v.recs.sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id));
    const node: VolumeNode = { id: v.id, name: v.name, dirName, mtime: new Date(recs.at(-1)?.created_at ?? v.created), backups: new Map() };
    const names = backupDirNames(recs);
    for (const b of recs) {
      const bn: BackupNode = { rec: b, dirName: names.get(b.id)!, volume: node, mtime: new Date(b.created_at) };
      node.backups.set(bn.dirName, bn);
      snap.byId.set(b.id, bn);
      if (b.status === 'available') node.latest = bn.dirName;
    }
    if (node.mtime > snap.newest) snap.newest = node.mtime;
    snap.volumes.set(dirName, node);
  }
  return snap;
}

/** where a backup's directory is, relative to the mount point */
export function backupPath(b: BackupNode): string {
  return `volumes/${b.volume.dirName}/${b.dirName}`;
}
