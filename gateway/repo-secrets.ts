/**
 * Where an encrypted repository's key comes from, for this appliance: the key file or the
 * passphrase file named in blockgate.json (`encryption`), or the passphrase in
 * BLOCKGATE_PASSPHRASE. Only paths are stored; the passphrase itself never is, and it never
 * appears on a command line.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { RepoSecrets } from '../drivers/repository.js';
import type { ApplianceConfig } from './config.js';

/** a secret read from a file ("-" is stdin), its final newline dropped */
export function readSecretFrom(file: string, what: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (e) {
    throw new Error(`cannot read the ${what} file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const out = text.replace(/\r?\n$/, '');
  if (!out) throw new Error(`the ${what} file ${file} is empty`);
  return out;
}

export function repoSecrets(cfg: ApplianceConfig, env: NodeJS.ProcessEnv = process.env): RepoSecrets {
  const enc = cfg.encryption;
  const resolve = (p: string) => (path.isAbsolute(p) || p === '-' ? p : path.resolve(cfg.dataDir, p));
  const passphrase = env.BLOCKGATE_PASSPHRASE || (enc?.passphraseFile ? readSecretFrom(resolve(enc.passphraseFile), 'passphrase') : undefined);
  return { passphrase, keyFile: enc?.keyFile ? resolve(enc.keyFile) : undefined, expectEncrypted: !!enc };
}
