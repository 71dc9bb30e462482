/**
 * `blockgate mount`, `blockgate umount` and `blockgate browse`: the catalog as a read-only
 * FUSE filesystem, and one-command loop mounts of the filesystems inside a backup.
 */
import path from 'node:path';
import type { Command } from 'commander';
import { ConflictError } from '../../catalog/catalog.js';
import { loadConfig } from '../../gateway/config.js';
import { BrowseError, type BrowseState, checkBrowsePrerequisites, closeBrowse, defaultBrowseDir, openBrowse, readState } from '../../gateway/fuse/browse.js';
import { FuseMount, findMount, prepareMountPoint, unmountCatalog } from '../../gateway/fuse/mount.js';
import { READABLE } from '../../gateway/fuse/tree.js';
import { type Globals, withApp } from './commands.js';
import { UsageError } from './output.js';

const say = (msg: string) => process.stderr.write(`blockgate: ${msg}\n`);

/** resolves with the name of the first of these signals to arrive */
function nextSignal(signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const handlers = new Map<NodeJS.Signals, () => void>();
    for (const s of signals) {
      const h = () => {
        for (const [sig, fn] of handlers) process.off(sig, fn);
        // a second signal while cleaning up: leave at once (auto_unmount clears the mount)
        for (const sig of signals) process.once(sig, () => process.exit(130));
        resolve(s);
      };
      handlers.set(s, h);
      process.once(s, h);
    }
  });
}

function int(text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`not a non-negative integer: ${text}`);
  return n;
}

function printBrowse(g: Globals, s: BrowseState, detached: boolean): void {
  if (g.format === 'json') {
    process.stdout.write(JSON.stringify(s, null, 2) + '\n');
    return;
  }
  const out: string[] = [];
  out.push(`backup ${s.backup.name || s.backup.id} (${s.backup.id}) of volume ${s.backup.volume}`);
  out.push(`  images: ${s.imagesDir}`);
  if (s.mounts.length) {
    out.push('mounted read-only:');
    for (const m of s.mounts) out.push(`  ${m.target}  ${m.fstype}  (${m.image}${m.loop ? ` on ${m.loop}` : ''}, ${m.options})`);
  } else {
    out.push('no filesystem could be mounted');
  }
  if (s.skipped.length) {
    out.push('not mounted:');
    for (const k of s.skipped) out.push(`  ${k.image}${k.fstype ? ` (${k.fstype})` : ''}: ${k.reason}`);
  }
  out.push(detached ? `close with: blockgate browse --close ${s.dir}` : 'press Ctrl-C to close (or run: blockgate browse --close ' + s.dir + ')');
  process.stdout.write(out.join('\n') + '\n');
}

export function mountCommands(program: Command, g: () => Globals): void {
  program
    .command('mount <mountpoint>')
    .description('mount the catalog read-only with FUSE (foreground; Ctrl-C or `blockgate umount` unmounts it)')
    .addHelpText(
      'after',
      `
The tree:
  MOUNTPOINT/volumes/<volume>/<backup>/disk.img     the whole volume as backed up
  MOUNTPOINT/volumes/<volume>/<backup>/partN.img    each MBR/GPT partition (mount -o loop,ro works on it)
  MOUNTPOINT/volumes/<volume>/<backup>/backup.json  the backup record
  MOUNTPOINT/volumes/<volume>/latest -> <backup>    the newest available backup
  MOUNTPOINT/by-id/<backup-id> -> ../volumes/<volume>/<backup>
<backup> is the backup's name, or name@<time> (plus an id prefix) when names clash.
A mount left behind by a killed process is cleared by \`blockgate umount\` or the next mount.`,
    )
    .option('--read-ahead <chunks>', 'chunks read ahead of a sequential reader', '8')
    .option('--debug', 'libfuse debug output')
    .option('--allow-other', 'let other users read the mount too (FUSE allow_other; as non-root, needs user_allow_other in /etc/fuse.conf)')
    .action(async (mountpoint: string, o: { readAhead: string; debug?: boolean; allowOther?: boolean }) => {
      const mp = path.resolve(mountpoint);
      const readAhead = int(o.readAhead);
      const note = await prepareMountPoint(mp);
      if (note) say(note);
      await withApp(g(), async (app) => {
        const m = await FuseMount.start(app, mp, { readAhead, debug: o.debug, allowOther: !!o.allowOther, log: (s) => say(`mount ${mp}: ${s}`) });
        const stop = nextSignal();
        process.stdout.write(`mounted the catalog of ${app.config.dataDir} at ${mp} (pid ${process.pid}); Ctrl-C or \`blockgate umount ${mp}\` unmounts it\n`);
        const why = await Promise.race([stop.then((s) => `got ${s}`), m.gone]);
        await m.close();
        say(`unmounted ${mp} (${why})`);
      });
      // the FUSE binding keeps the event loop alive when the mount was taken away from under it
      process.exit(0);
    });

  program
    .command('umount <mountpoint>')
    .alias('unmount')
    .description('unmount a blockgate mount (also one left stale by a killed process), or close a browse directory')
    .action(async (mountpoint: string) => {
      const mp = path.resolve(mountpoint);
      const dataDir = loadConfig(g().dataDir).dataDir;
      // a browse directory is not a mount point itself; never look inside a mount (it may be stale)
      if (!(await findMount(mp)) && readState(dataDir, mp)) {
        for (const n of await closeBrowse(dataDir, mp)) say(n);
        process.stdout.write(`closed browse ${mp}\n`);
        return;
      }
      process.stdout.write(`${await unmountCatalog(mp)}\n`);
    });

  program
    .command('browse [backup] [dir]')
    .description('mount the filesystems inside a backup read-only in DIR (ext4 noload, xfs norecovery; needs root and loop devices); Ctrl-C or --close DIR undoes it')
    .option('--close <dir>', 'undo a browse: unmount its filesystems, loop devices and catalog mount')
    .option('--detach', 'return once mounted and leave it open until `browse --close DIR`')
    .action(async (ref: string | undefined, dirArg: string | undefined, o: { close?: string; detach?: boolean }) => {
      try {
        if (o.close) {
          if (ref || dirArg) throw new UsageError('browse --close DIR takes no other arguments');
          for (const n of await closeBrowse(loadConfig(g().dataDir).dataDir, o.close)) say(n);
          process.stdout.write(`closed browse ${path.resolve(o.close)}\n`);
          return;
        }
        if (!ref) throw new UsageError('browse needs a BACKUP (id or name), or --close DIR');
        await checkBrowsePrerequisites();
        const globals = g();
        const dataDir = loadConfig(globals.dataDir).dataDir;
        const backup = await withApp(globals, async (app) => app.catalog.backupRecord(ref));
        if (!READABLE.has(backup.status)) throw new ConflictError(`backup ${backup.id} is ${backup.status}; only an available backup can be browsed`);
        // no DIR: a new private one (mkdtemp), never a predictable name someone could have made first
        const dir = dirArg ? path.resolve(dirArg) : defaultBrowseDir(backup.id);
        const stop = o.detach ? undefined : nextSignal();
        const state = await openBrowse({ cli: process.argv[1]!, dataDir, backup, dir, madeDir: !dirArg, log: globals.format === 'json' ? undefined : say });
        printBrowse(globals, state, !!o.detach);
        if (!stop) return;
        const why = await Promise.race([stop.then((s) => `got ${s}`), waitForMountExit(dataDir, state)]);
        if (readState(dataDir, state.dir)) for (const n of await closeBrowse(dataDir, state.dir)) say(n);
        say(`closed browse ${dir} (${why})`);
      } catch (e) {
        if (e instanceof BrowseError) throw new ConflictError(e.message);
        throw e;
      }
    });
}

/** resolves if the process serving the browse's catalog mount goes away */
async function waitForMountExit(dataDir: string, s: BrowseState): Promise<string> {
  for (;;) {
    await new Promise((r) => setTimeout(r, 1000));
    if (!(await findMount(s.fuseDir))) return 'the catalog mount went away';
    if (!readState(dataDir, s.dir)) return 'closed elsewhere';
  }
}
