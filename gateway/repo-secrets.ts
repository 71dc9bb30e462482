/**
 * The secrets of this appliance's repository, resolved when it is opened and never kept in
 * the config object (which saveConfig writes to blockgate.json) nor put on a command line:
 * - where an encrypted repository's key comes from: the key file or the passphrase file named
 *   in blockgate.json (`encryption`), or the passphrase in BLOCKGATE_PASSPHRASE (only paths
 *   are stored; the passphrase itself never is);
 * - an S3 repository's endpoint, region and keys where blockgate.json leaves them out: the
 *   standard AWS_* variables (s3StoreOptions), so drivers/store/s3.ts reads no environment.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { RepoSecrets } from '../drivers/repository.js';
import type { S3StoreOptions } from '../drivers/store/s3.js';
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

/**
 * A passphrase given to a command: from `file` when one is named ("-": stdin), else from the
 * environment variable (BLOCKGATE_PASSPHRASE for the repository's, BLOCKGATE_NEW_PASSPHRASE
 * for one being added), never from argv.
 */
export function passphraseFrom(variable: 'BLOCKGATE_PASSPHRASE' | 'BLOCKGATE_NEW_PASSPHRASE', file: string | undefined, what: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  return file !== undefined ? readSecretFrom(file, what) : env[variable] || undefined;
}

export function repoSecrets(cfg: ApplianceConfig, env: NodeJS.ProcessEnv = process.env): RepoSecrets {
  const enc = cfg.encryption;
  const resolve = (p: string) => (path.isAbsolute(p) || p === '-' ? p : path.resolve(cfg.dataDir, p));
  const passphrase = env.BLOCKGATE_PASSPHRASE || (enc?.passphraseFile ? readSecretFrom(resolve(enc.passphraseFile), 'passphrase') : undefined);
  return { passphrase, keyFile: enc?.keyFile ? resolve(enc.keyFile) : undefined, expectEncrypted: !!enc };
}

/**
 * The S3 store's options for a repository: `cfg` (blockgate.json's `repository`, or what
 * `repo create` was given) over the AWS_* variables: endpoint AWS_ENDPOINT_URL_S3, else
 * AWS_ENDPOINT_URL; region AWS_REGION, else AWS_DEFAULT_REGION (the store's default is
 * us-east-1); keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and AWS_SESSION_TOKEN only
 * when cfg names no access key. With no keys at all, the SDK's default chain finds them.
 */
export function s3StoreOptions<T extends S3StoreOptions>(cfg: T, env: NodeJS.ProcessEnv = process.env): T {
  const endpoint = cfg.endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL;
  const region = cfg.region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION;
  const accessKeyId = cfg.accessKeyId ?? env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = cfg.secretAccessKey ?? env.AWS_SECRET_ACCESS_KEY;
  const sessionToken = cfg.sessionToken ?? (cfg.accessKeyId === undefined ? env.AWS_SESSION_TOKEN : undefined);
  return {
    ...cfg,
    ...(endpoint !== undefined ? { endpoint } : {}),
    ...(region !== undefined ? { region } : {}),
    ...(accessKeyId !== undefined ? { accessKeyId } : {}),
    ...(secretAccessKey !== undefined ? { secretAccessKey } : {}),
    ...(sessionToken !== undefined ? { sessionToken } : {}),
  };
}
