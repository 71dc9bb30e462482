/**
 * A second guard for a mount whose server is SIGKILLed. fusermount's `auto_unmount` helper
 * decides whether to unmount by opening the mount point once it sees its server go; on this
 * kernel the server's control socket can be released before its /dev/fuse descriptor, and in
 * some runs the helper then leaves without unmounting (seen under load). The watchdog is a
 * small python3 process started before the mount, so it holds none of the mount's
 * descriptors. It reads a pipe whose write end only the server holds: end of file means the
 * server is gone (or has closed the mount). If the mount point still carries this server's
 * mount (its source names the server's pid), it detaches it lazily with `umount -l
 * --no-canonicalize`, which never looks at the mount, so a dead or hung server cannot block it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';

const SCRIPT = String.raw`
import re, subprocess, sys
mnt, source = sys.argv[1], sys.argv[2]
while sys.stdin.buffer.read(65536):
    pass
def unescape(s):
    return re.sub(r'\\([0-7]{3})', lambda m: chr(int(m.group(1), 8)), s)
def ours():
    with open('/proc/self/mountinfo') as f:
        for line in f:
            left, _, right = line.rstrip('\n').partition(' - ')
            a, b = left.split(' '), right.split(' ')
            if len(a) > 4 and len(b) > 1 and unescape(a[4]) == mnt and unescape(b[1]) == source:
                return True
    return False
for cmd in (['umount', '-l', '--no-canonicalize', mnt], ['fusermount', '-u', '-z', mnt]):
    if not ours():
        break
    subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
`;

const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

export interface Watchdog {
  /** the mount is closed cleanly: the watchdog finds nothing of this server's and exits */
  stop(): void;
  readonly pid: number | undefined;
}

/**
 * Starts the watchdog for a mount this process is about to make at `mountPoint` with
 * `source` as its fsname. Without python3 it is absent (auto_unmount alone guards the mount).
 */
export function startWatchdog(mountPoint: string, source: string, log?: (msg: string) => void): Watchdog {
  let child: ChildProcess | undefined;
  try {
    // its own process group: a signal to the server's group does not take the watchdog with it
    child = spawn(PYTHON, ['-c', SCRIPT, mountPoint, source], { stdio: ['pipe', 'ignore', 'ignore'], detached: true });
    child.on('error', (e) => log?.(`mount watchdog not started (${e.message}); auto_unmount alone guards the mount`));
    child.stdin!.on('error', () => undefined);
    child.unref();
    (child.stdin as unknown as { unref?: () => void }).unref?.();
  } catch (e) {
    log?.(`mount watchdog not started (${(e as Error).message}); auto_unmount alone guards the mount`);
  }
  return {
    pid: child?.pid,
    stop: () => child?.stdin?.end(),
  };
}
