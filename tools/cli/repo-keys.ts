/**
 * `blockgate repo key list|add|remove`: the wrapped copies of an encrypted repository's
 * master key. A passphrase is added, changed (add the new one, remove the old) or revoked
 * without rewriting any data; the last one cannot be removed. New passphrases come from
 * BLOCKGATE_NEW_PASSPHRASE or --new-passphrase-file, never from the command line.
 */
import type { Command } from 'commander';
import { passphraseFrom, repoSecrets } from '../../gateway/repo-secrets.js';
import { type Globals, withApp } from './commands.js';
import { UsageError, printRecord, printRows } from './output.js';

export function repoKeyCommands(program: Command, g: () => Globals): void {
  const repo = program.commands.find((c) => c.name() === 'repo');
  if (!repo) throw new Error('the repo command group is missing');
  const key = repo.command('key').description("an encrypted repository's passphrases (wrapped copies of its master key)");
  key.command('list').action(() =>
    withApp(g(), async (app) => {
      const enc = app.repo.config.encryption;
      if (!enc) throw new UsageError(`repository ${app.repo.store.location} is not encrypted`);
      printRows(g().format, enc.keys.map((k) => ({ id: k.id, label: k.label ?? '', kdf: `${k.kdf} N=${k.params.N} r=${k.params.r} p=${k.params.p}`, created_at: k.created_at })), ['id', 'label', 'kdf', 'created_at']);
    }),
  );
  key
    .command('add')
    .description('add a passphrase (from BLOCKGATE_NEW_PASSPHRASE or --new-passphrase-file)')
    .option('--new-passphrase-file <file>', 'file holding the new passphrase ("-": stdin)')
    .option('--label <text>')
    .action((o: { newPassphraseFile?: string; label?: string }) =>
      withApp(g(), async (app) => {
        let pass: string | undefined;
        try {
          pass = passphraseFrom('BLOCKGATE_NEW_PASSPHRASE', o.newPassphraseFile, 'new passphrase');
        } catch (e) {
          throw new UsageError((e as Error).message);
        }
        if (!pass) throw new UsageError('the new passphrase: BLOCKGATE_NEW_PASSPHRASE or --new-passphrase-file FILE');
        const id = await app.repo.addKey(repoSecrets(app.config), pass, o.label);
        printRecord(g().format, { added: id, keys: app.repo.config.encryption!.keys.length });
      }),
    );
  key
    .command('remove <id>')
    .description('remove a passphrase (not the last one)')
    .action((id: string) =>
      withApp(g(), async (app) => {
        await app.repo.removeKey(id);
        printRecord(g().format, { removed: id, keys: app.repo.config.encryption!.keys.length });
      }),
    );
}
