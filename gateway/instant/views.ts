/**
 * What `restore list` / `restore show` report of a session: its catalog record (offlineView,
 * enough when no daemon runs it), overlaid by the live progress and throttle of the hydrate
 * device when this daemon runs it (liveView).
 */
import type { SessionRecord } from '../../catalog/sessions.js';
import type { HydrateDevice } from '../devices/hydrate.js';
import { ownerGone } from './records.js';

export interface SessionView {
  id: string;
  status: string;
  backup_id: string;
  backup_name: string;
  volume_id: string;
  volume_name: string;
  export_name: string;
  uri: string | null;
  unix_uri: string | null;
  attached: boolean;
  blocks_owned: number;
  blocks_durable: number;
  blocks_total: number;
  percent: number;
  block_size: number;
  size_bytes: number;
  bytes_copied: number;
  /** bytes/s brought in over the last seconds (0 when no daemon runs it) */
  rate_bps: number;
  copy_rate: number;
  copy_concurrency: number;
  guest_reads_from_backup: number;
  detach_on_complete: boolean;
  resumes: number;
  served_by_pid: number | null;
  created_at: string;
  completed_at: string | null;
  status_reason: string | null;
}

export type UriMaker = (name: string) => { tcp: string; unix: string | null };

/** owned of total, in percent with one decimal, rounded down */
function percent(owned: number, total: number): number {
  return total ? Math.floor((owned / total) * 1000) / 10 : 0;
}

/** A session view from the catalog alone (no daemon runs it, or it is not live here). */
export function offlineView(rec: SessionRecord, uris?: UriMaker): SessionView {
  const u = uris && rec.attached && (rec.status === 'running' || rec.status === 'completed') ? uris(rec.export_name) : null;
  const owned = rec.status === 'completed' ? rec.blocks_total : rec.blocks_durable;
  return {
    id: rec.id,
    status: rec.status,
    backup_id: rec.backup_id,
    backup_name: rec.backup_name,
    volume_id: rec.volume_id,
    volume_name: rec.volume_name,
    export_name: rec.export_name,
    uri: u?.tcp ?? null,
    unix_uri: u?.unix ?? null,
    attached: rec.attached,
    blocks_owned: owned,
    blocks_durable: owned,
    blocks_total: rec.blocks_total,
    percent: percent(owned, rec.blocks_total),
    block_size: rec.block_size,
    size_bytes: rec.size_bytes,
    bytes_copied: rec.bytes_copied,
    rate_bps: 0,
    copy_rate: rec.copy_rate,
    copy_concurrency: rec.copy_concurrency,
    guest_reads_from_backup: 0,
    detach_on_complete: rec.detach_on_complete,
    resumes: rec.resumes,
    served_by_pid: rec.owner && !ownerGone(rec.owner) ? rec.owner.pid : null,
    created_at: rec.created_at,
    completed_at: rec.completed_at,
    status_reason: rec.status_reason,
  };
}

/** v, the view of a running session, with the progress and throttle of its hydrate device */
export function liveView(v: SessionView, hydrate: HydrateDevice, bytesBefore: number): SessionView {
  const s = hydrate.stats();
  v.blocks_owned = s.blocksOwned;
  v.blocks_durable = s.blocksDurable;
  v.percent = percent(s.blocksOwned, s.blocksTotal);
  v.bytes_copied = bytesBefore + s.bytesCopied;
  v.rate_bps = Math.round(s.rate);
  v.guest_reads_from_backup = s.guestReadsFromBackup;
  const th = hydrate.throttle;
  v.copy_rate = th.rate;
  v.copy_concurrency = th.concurrency;
  return v;
}
