/**
 * `blockgate repo create`: chooses the repository of a data directory (a directory on local
 * disk or NFS, or an S3 bucket) and creates it, or attaches to the blockgate repository
 * already there. The choice goes to DATA_DIR/blockgate.json, which every command reads.
 *
 * Credentials: `--access-key` with the secret from `--secret-key-file FILE` (or `-` for stdin,
 * or AWS_SECRET_ACCESS_KEY) are stored in blockgate.json, which is then made readable by its
 * owner only (0600); without them nothing secret is stored and the S3 driver reads
 * AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the SDK's default chain) each time it opens.
 * A secret is never taken from the command line (`--secret-key` is refused): argv is visible
 * to every local user in ps and /proc. Keys never appear in output, errors, logs, manifests
 * or exported records.
 *
 * `repo info` and `repo gc` (tools/cli/commands.ts) work the same for both kinds.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Option, type Command } from 'commander';
import { Catalog } from '../../catalog/catalog.js';
import { CODECS, type CodecName } from '../../drivers/codec.js';
import { DEFAULT_BLOCK } from '../../drivers/chunk.js';
import { Repository, type RepoSecrets } from '../../drivers/repository.js';
import { passphraseFrom, s3StoreOptions } from '../../gateway/repo-secrets.js';
import type { ObjectStore } from '../../drivers/store/types.js';
import { DirStore } from '../../drivers/store/dir.js';
import { Appliance } from '../../gateway/appliance.js';
import { type ApplianceConfig, CONFIG_FILE, type RepoDriverConfig, type S3RepoConfig, loadConfig, saveConfig } from '../../gateway/config.js';
import { repoInfo } from '../../gateway/engine/repo-info.js';
import { parseSize } from '../../gateway/size.js';
import type { Globals } from './commands.js';
import { UsageError, printRecord } from './output.js';

export interface RepoCreateOptions {
  driver: 'dir' | 's3';
  path?: string;
  bucket?: string;
  prefix?: string;
  endpoint?: string;
  region?: string;
  accessKey?: string;
  /** refused: a secret on argv is visible in ps */
  secretKey?: string;
  secretKeyFile?: string;
  concurrency?: string;
  chunkSize?: string;
  packSize?: string;
  codec?: CodecName;
  /** a new encrypted repository (AES-256-GCM, keyed names) */
  encrypt?: boolean;
  passphraseFile?: string;
  keyFile?: string;
}

export const SECRET_ON_ARGV = '--secret-key is no longer accepted: a secret on the command line is visible to every local user (ps, /proc/PID/cmdline). Put it in a file only you can read and give --secret-key-file FILE (or --secret-key-file - to read it from stdin), or set AWS_SECRET_ACCESS_KEY';

/** The secret of --secret-key-file: the file's first line (stdin for "-"). */
export function readSecretFile(file: string): string {
  let text: string;
  try {
    text = file === '-' ? fs.readFileSync(0, 'utf8') : fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read --secret-key-file ${file === '-' ? '(stdin)' : file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const secret = text.split(/\r?\n/)[0]!.trim();
  if (!secret) throw new UsageError(`--secret-key-file ${file === '-' ? '(stdin)' : file} is empty`);
  return secret;
}

/** The repository configuration the options describe (nothing is touched yet). */
export function repoConfigFrom(o: RepoCreateOptions, env: NodeJS.ProcessEnv = process.env): RepoDriverConfig {
  if (o.secretKey !== undefined) throw new UsageError(SECRET_ON_ARGV);
  if (o.driver === 'dir') {
    for (const k of ['bucket', 'prefix', 'endpoint', 'region', 'accessKey', 'secretKeyFile', 'concurrency'] as const) {
      if (o[k] !== undefined) throw new UsageError(`--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} is for --driver s3`);
    }
    if (!o.path) throw new UsageError('repo create --driver dir needs --path DIR');
    return { driver: 'dir', path: path.resolve(o.path) };
  }
  if (o.path !== undefined) throw new UsageError('--path is for --driver dir');
  if (!o.bucket) throw new UsageError('repo create --driver s3 needs --bucket NAME');
  if (o.secretKeyFile !== undefined && o.accessKey === undefined) {
    throw new UsageError('--secret-key-file goes with --access-key (or give neither: then AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are used at each start)');
  }
  let secret: string | undefined;
  if (o.accessKey !== undefined) {
    secret = o.secretKeyFile !== undefined ? readSecretFile(o.secretKeyFile) : env.AWS_SECRET_ACCESS_KEY || undefined;
    if (secret === undefined) throw new UsageError('--access-key needs its secret: --secret-key-file FILE (or -), or AWS_SECRET_ACCESS_KEY; or give neither (then AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are used at each start)');
  }
  let concurrency: number | undefined;
  if (o.concurrency !== undefined) {
    concurrency = Number(o.concurrency);
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 256) throw new UsageError(`--concurrency must be a whole number from 1 to 256, not ${JSON.stringify(o.concurrency)}`);
  }
  const cfg: S3RepoConfig = { driver: 's3', bucket: o.bucket };
  if (o.prefix) cfg.prefix = o.prefix;
  if (o.endpoint) cfg.endpoint = o.endpoint;
  if (o.region) cfg.region = o.region;
  if (o.accessKey !== undefined) {
    cfg.accessKeyId = o.accessKey;
    cfg.secretAccessKey = secret;
  }
  if (concurrency !== undefined) cfg.concurrency = concurrency;
  return cfg;
}

/** The configuration as shown to users: no secret. */
export function redactRepoConfig(cfg: RepoDriverConfig): Record<string, unknown> {
  const out: Record<string, unknown> = { ...cfg };
  if ('secretAccessKey' in out && out.secretAccessKey !== undefined) out.secretAccessKey = '***';
  if ('accessKeyId' in out && out.accessKeyId !== undefined) out.accessKeyId = '***';
  return out;
}

async function openStoreForCreate(cfg: RepoDriverConfig): Promise<ObjectStore> {
  if (cfg.driver === 'dir') return new DirStore(cfg.path);
  const { S3Store } = await import('../../drivers/store/s3.js');
  // the bucket is made if it does not exist yet (wrong keys or endpoint fail here, clearly)
  return S3Store.open({ ...s3StoreOptions(cfg), createBucket: true });
}

/**
 * The data directory's catalog and the repository: refuses (before anything is created) when
 * the catalog already holds backups of another repository; with `bind`, a catalog that has no
 * backup yet (only volumes, or the default repository an earlier command made) moves to
 * repository `bind.id`. `repoId` null: a repository that does not exist yet.
 */
async function checkCatalog(dataDir: string, repoId: string | null, location: string, bind?: { id: string }): Promise<void> {
  const dir = path.join(dataDir, 'catalog');
  if (!fs.existsSync(dir)) return;
  const catalog = new Catalog(dir);
  try {
    const bound = catalog.meta.get('repository') as { id: string; location: string } | undefined;
    if (!bound || bound.id === repoId) return;
    const used = catalog.backups.getCount() + catalog.chunks.getCount() + catalog.pages.getCount();
    if (used > 0) {
      throw new UsageError(
        `the catalog in ${dataDir} holds backups of repository ${bound.id} (${bound.location}); a catalog never mixes repositories: use another --data-dir for ${location}`,
      );
    }
    if (bind) catalog.meta.putSync('repository', { id: bind.id, location });
  } finally {
    await catalog.close();
  }
}

/** blockgate.json gets the repository; made 0600 first when it will hold a secret. */
function writeConfig(dataDir: string, repository: RepoDriverConfig, chunkSize: number, codec: CodecName, packSize: number, encryption?: ApplianceConfig['encryption']): void {
  const cfg = loadConfig(dataDir);
  const file = path.join(cfg.dataDir, CONFIG_FILE);
  const secret = repository.driver === 's3' && repository.secretAccessKey !== undefined;
  fs.mkdirSync(cfg.dataDir, { recursive: true, mode: 0o700 });
  if (secret) {
    if (!fs.existsSync(file)) fs.writeFileSync(file, '{}\n', { mode: 0o600 });
    fs.chmodSync(file, 0o600);
  }
  saveConfig({ ...cfg, repository, chunkSize, codec, packSize, encryption }, ['repository', 'chunkSize', 'codec', 'packSize', 'encryption']);
}

export async function repoCreate(g: Globals, o: RepoCreateOptions): Promise<Record<string, unknown>> {
  const repository = repoConfigFrom(o);
  let chunkSize: number | undefined;
  let packSize: number | undefined;
  try {
    if (o.chunkSize !== undefined) chunkSize = parseSize(o.chunkSize);
    if (o.packSize !== undefined) packSize = o.packSize === '0' ? 0 : parseSize(o.packSize);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const base = loadConfig(g.dataDir);
  const dataDir = base.dataDir;
  let passphrase: string | undefined;
  try {
    passphrase = passphraseFrom('BLOCKGATE_PASSPHRASE', o.passphraseFile, 'passphrase');
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const keyFile = o.keyFile !== undefined ? path.resolve(o.keyFile) : undefined;
  const secrets: RepoSecrets = { passphrase, keyFile, expectEncrypted: !!o.encrypt };
  const store = await openStoreForCreate(repository);
  let repo: Repository;
  let created = false;
  try {
    const existing = (await store.has('config')) ? await Repository.open(store, secrets) : null;
    await checkCatalog(dataDir, existing?.config.id ?? null, store.location);
    if (existing) {
      repo = existing;
    } else {
      if (repository.driver === 'dir') fs.mkdirSync(repository.path, { recursive: true, mode: 0o700 });
      const encrypt = o.encrypt ? { passphrase: secrets.passphrase ?? undefined, keyFile: secrets.keyFile ?? undefined } : undefined;
      if (encrypt && !encrypt.passphrase && !encrypt.keyFile) throw new UsageError('--encrypt needs a passphrase (BLOCKGATE_PASSPHRASE or --passphrase-file) or --key-file');
      if (encrypt?.keyFile && fs.existsSync(encrypt.keyFile)) throw new UsageError(`key file ${encrypt.keyFile} already exists: a new repository gets a new key`);
      const packed = packSize ?? base.packSize ?? 0;
      // a packed repository's block defaults to the small block, a loose one's to 4 MiB
      const cs = chunkSize ?? (packed ? (base.chunkSize < 64 * 1024 ? base.chunkSize : DEFAULT_BLOCK) : base.chunkSize);
      try {
        repo = await Repository.create(store, { chunkSize: cs, codec: o.codec ?? base.codec, packSize: packed, encrypt });
      } catch (e) {
        if (/chunk size|pack size/.test((e as Error).message)) throw new UsageError((e as Error).message);
        throw e;
      }
      created = true;
    }
  } finally {
    await store.close?.();
  }
  const notes: string[] = [];
  if (!created) {
    notes.push(`a blockgate repository already exists at ${repo.store.location}: using it`);
    if (chunkSize !== undefined && chunkSize !== repo.chunkSize) notes.push(`its chunk size stays ${repo.chunkSize} (--chunk-size applies to a new repository)`);
    if (packSize !== undefined && packSize !== (repo.config.packSize ?? 0)) notes.push(`its pack size stays ${repo.config.packSize ?? 0} (--pack-size applies to a new repository)`);
    if (o.codec !== undefined && o.codec !== repo.config.codec) notes.push(`its codec stays ${repo.config.codec} (--codec applies to a new repository)`);
  }
  await checkCatalog(dataDir, repo.config.id, repo.store.location, { id: repo.config.id });
  const encryption = repo.keys ? { ...(keyFile ? { keyFile } : {}), ...(o.passphraseFile && o.passphraseFile !== '-' ? { passphraseFile: path.resolve(o.passphraseFile) } : {}) } : undefined;
  writeConfig(dataDir, repository, repo.chunkSize, repo.config.codec, repo.config.packSize ?? 0, encryption);
  const app = await Appliance.open(loadConfig(dataDir));
  try {
    return { driver: repository.driver, created, config: redactRepoConfig(repository), ...(notes.length ? { notes } : {}), ...repoInfo(app) };
  } finally {
    await app.close();
  }
}

export function repoCreateCommand(program: Command, g: () => Globals): void {
  const repo = program.commands.find((c) => c.name() === 'repo') ?? program.command('repo').description('the chunk repository');
  repo
    .command('create')
    .description('choose and create the repository: a directory (--driver dir --path DIR) or an S3 bucket (--driver s3 --bucket B --endpoint URL)')
    .addOption(new Option('--driver <driver>', 'repository kind').choices(['dir', 's3']).makeOptionMandatory())
    .option('--path <dir>', 'dir: the repository directory (local disk or NFS)')
    .option('--bucket <name>', 's3: bucket (created if missing)')
    .option('--prefix <prefix>', 's3: key prefix inside the bucket')
    .option('--endpoint <url>', 's3: endpoint URL, e.g. http://rgw.example:7480 (default AWS S3 or AWS_ENDPOINT_URL)')
    .option('--region <region>', 's3: region (default AWS_REGION, else us-east-1)')
    .option('--access-key <key>', 's3: access key (stored in blockgate.json, mode 0600, with its secret; default AWS_ACCESS_KEY_ID at each start)')
    .option('--secret-key-file <file>', 's3: file holding the secret key for --access-key ("-": stdin; default AWS_SECRET_ACCESS_KEY)')
    .addOption(new Option('--secret-key <secret>', 'refused: use --secret-key-file (argv is visible in ps)').hideHelp())
    .option('--concurrency <n>', 's3: parallel requests (default 8)')
    .option('--chunk-size <size>', 'chunk (block) size of a new repository, a power of two: 8K to 16M packed (default 16K), 64K to 16M with --pack-size 0 (default 4M)')
    .option('--pack-size <size>', 'a new packed repository: blocks go into pack objects of about this size, 1M to 1G (e.g. 32M); 0: one object per chunk')
    .addOption(new Option('--codec <codec>', 'compression of a new repository (default zstd)').choices([...CODECS]))
    .option('--encrypt', 'a new encrypted repository: its master key wrapped by a passphrase (BLOCKGATE_PASSPHRASE or --passphrase-file), or in a new --key-file')
    .option('--passphrase-file <file>', 'file holding the passphrase of an encrypted repository ("-": stdin at create; its path is kept in blockgate.json)')
    .option('--key-file <file>', 'key file of an encrypted repository, outside the repository (made by --encrypt if it does not exist; its path is kept in blockgate.json)')
    .action((o: RepoCreateOptions) => repoCreate(g(), o).then((r) => printRecord(g().format, r)));
}
