/**
 * Who holds a lock or lease kept in a shared place (the repository): enough to tell, from
 * any process on any host, whether the holder can still be running.
 *
 * A pid alone is not: pids are reused, and a pid means nothing on another host. So an
 * identity carries the host name, the kernel's boot id (a reboot ends every holder) and the
 * process start time in clock ticks since boot (a reused pid has another one). On the same
 * host and boot, the holder is alive exactly when a process with that pid and start time
 * exists. On another host nothing can be probed: the holder's heartbeat decides, against an
 * expiry chosen by the caller.
 */
import fs from 'node:fs';
import os from 'node:os';

export interface ProcessIdentity {
  host: string;
  pid: number;
  /** /proc/sys/kernel/random/boot_id, or "" where there is none */
  boot: string;
  /** field 22 of /proc/<pid>/stat (start time in ticks since boot), or 0 where unknown */
  start: number;
}

function readBootId(): string {
  try {
    return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

/** start time of a process in ticks since boot, or undefined if there is no such process */
export function processStart(pid: number): number | undefined {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // the command name (field 2) is in parentheses and may hold spaces: count after the last ')'
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const start = Number(rest[19]);
  return Number.isFinite(start) ? start : 0;
}

const BOOT = readBootId();
const HOST = os.hostname();
let self: ProcessIdentity | undefined;

export function selfIdentity(): ProcessIdentity {
  self ??= { host: HOST, pid: process.pid, boot: BOOT, start: processStart(process.pid) ?? 0 };
  return self;
}

/**
 * 'alive' or 'dead' when it can be known from here (same host), 'unknown' for a holder on
 * another host (the caller then goes by its heartbeat).
 */
export function identityState(id: Partial<ProcessIdentity> | null | undefined): 'alive' | 'dead' | 'unknown' {
  if (!id || typeof id.pid !== 'number') return 'dead';
  if (id.host !== HOST) return 'unknown';
  if (id.boot && BOOT && id.boot !== BOOT) return 'dead';
  const start = processStart(id.pid);
  if (start === undefined) return 'dead';
  if (id.start && start && id.start !== start) return 'dead';
  return 'alive';
}
