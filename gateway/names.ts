/**
 * Names that become paths, validated in one place (DESIGN "Security"). A volume name becomes
 * `volumes/<name>.img` in the data dir, and so does the name of a restore target, of an
 * instant-restore target (whose session export is `restore-<name>`) and of an RBD restore's
 * volume record. Every such name enters through `checkName` before anything is created:
 *
 *   1 to 128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit
 *   (so no '/', no '.' or '..', no leading '-' that a tool would read as an option).
 *
 * Directories the user names (browse) are checked by `checkNewDir`: a new, private directory
 * is made with mkdir (never an existing one, never through a symlink).
 */
import fs from 'node:fs';
import path from 'node:path';

export const NAME_MAX = 128;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** A name that would not be a safe, plain path component. Bad usage (CLI exit code 2, HTTP 400). */
export class InvalidNameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvalidNameError';
  }
}

/** Returns `name` if it is a safe plain name for a `kind` (volume, restore target, ...); throws InvalidNameError otherwise. */
export function checkName(kind: string, name: unknown): string {
  const shown = typeof name === 'string' ? JSON.stringify(name) : String(name);
  if (typeof name !== 'string' || name.length === 0) throw new InvalidNameError(`invalid ${kind} name ${shown}: a name is required`);
  if (name.length > NAME_MAX) throw new InvalidNameError(`invalid ${kind} name ${JSON.stringify(name.slice(0, 40))}...: at most ${NAME_MAX} characters`);
  if (!NAME_RE.test(name)) {
    const why = name.includes('/') || name.includes('\\') ? "no '/'"
      : name === '.' || name === '..' ? "not '.' or '..'"
      : name.startsWith('-') ? "no leading '-'"
      : name.startsWith('.') ? "no leading '.'"
      : "only letters, digits, '.', '_' and '-'";
    throw new InvalidNameError(`invalid ${kind} name ${shown}: ${why} (use letters, digits, '.', '_' and '-', starting with a letter or digit, at most ${NAME_MAX})`);
  }
  return name;
}

/**
 * A directory the user named for blockgate to mount things in (browse), as root: it must be
 * one nobody else can swap out from under us. Every existing ancestor must be owned by root
 * or us and not writable by others (unless sticky, like /tmp); the directory itself is made
 * new (0700, by a plain mkdir, which never follows a symlink), or, if it exists, must be a
 * real, empty directory of ours that others cannot write to. A symlink is refused.
 */
export function prepareDir(dir: string, what: string): { dir: string; created: boolean } {
  const abs = path.resolve(dir);
  const uid = process.getuid?.() ?? 0;
  const unsafe = (p: string, st: fs.Stats): string | undefined => {
    if (st.uid !== 0 && st.uid !== uid) return `${p} belongs to uid ${st.uid}`;
    if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) return `${p} is writable by others`;
    return undefined;
  };
  // the ancestors, from / down, as they really are (an ancestor may be a symlink the admin made)
  const missing: string[] = [];
  let parent = path.dirname(abs);
  for (;;) {
    try {
      parent = fs.realpathSync(parent);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new InvalidNameError(`${what} ${abs}: ${(e as Error).message}`);
      missing.unshift(path.basename(parent));
      parent = path.dirname(parent);
    }
  }
  for (let p = parent; ; p = path.dirname(p)) {
    const why = unsafe(p, fs.statSync(p));
    if (why) throw new InvalidNameError(`${what} ${abs} is not safe to use: ${why}; choose a directory only you can change`);
    if (p === path.dirname(p)) break;
  }
  let cur = parent;
  for (const m of missing) {
    cur = path.join(cur, m);
    fs.mkdirSync(cur, { mode: 0o700 });
  }
  const target = path.join(cur, path.basename(abs));
  let st: fs.Stats | undefined;
  try {
    st = fs.lstatSync(target);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new InvalidNameError(`${what} ${abs}: ${(e as Error).message}`);
  }
  if (!st) {
    try {
      fs.mkdirSync(target, { mode: 0o700 });
    } catch (e) {
      throw new InvalidNameError(`${what} ${abs}: cannot create it: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    fs.chmodSync(target, 0o700);
    return { dir: target, created: true };
  }
  if (st.isSymbolicLink()) throw new InvalidNameError(`${what} ${abs} is a symbolic link; give a real directory (or a new one)`);
  if (!st.isDirectory()) throw new InvalidNameError(`${what} ${abs} is not a directory`);
  const why = unsafe(target, st);
  if (why) throw new InvalidNameError(`${what} ${abs} is not safe to use: ${why}; choose a directory only you can change`);
  if (fs.readdirSync(target).length) throw new InvalidNameError(`${what} ${abs} is not empty; choose an empty or new directory`);
  return { dir: target, created: false };
}
