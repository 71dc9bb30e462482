/**
 * Who runs an operation, and whether it still runs: the owner recorded on a backup, a lock or
 * a job is this process's identity (drivers/process-identity.ts), probed later by pid, start
 * time and boot id.
 */
import { identityState, selfIdentity } from '../drivers/process-identity.js';
import { type Owner, now } from './records.js';

/** the process running an operation: host, pid, boot id and start time (drivers/process-identity.ts) */
export function ownerHere(): Owner {
  const id = selfIdentity();
  return { pid: id.pid, host: id.host, since: now(), boot: id.boot, start: id.start };
}
/**
 * True if the owning process still runs. On this host that is the same pid with the same
 * start time in the same boot (a reused pid, or a reboot, is not the owner; records from
 * before these were kept compare by pid alone). An owner on another host (a data dir on a
 * shared file system) cannot be probed and is taken as alive.
 */
export function ownerAlive(o: Owner | null | undefined): boolean {
  if (!o) return false;
  if (o.pid === process.pid && o.host === selfIdentity().host && (!o.start || o.start === selfIdentity().start)) return true;
  return identityState({ host: o.host, pid: o.pid, boot: o.boot ?? '', start: o.start ?? 0 }) !== 'dead';
}
