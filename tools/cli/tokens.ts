/**
 * `blockgate token add|list|remove`: the API's tokens (auth.mode "tokens"). A token maps to a
 * user, a project and a role (member or admin); blockgate.json keeps only its SHA-256, so the
 * token is printed once, at `add`, and never stored or shown again.
 */
import { randomBytes } from 'node:crypto';
import type { Command } from 'commander';
import { type TokenEntry, tokenHash, validateAuth } from '../../gateway/api/auth.js';
import { CONFIG_FILE, loadConfig, saveConfig } from '../../gateway/config.js';
import type { Globals } from './commands.js';
import { UsageError, printRecord, printRows } from './output.js';

const ID_RE = /^[A-Za-z0-9_.@-]{1,64}$/;

export function tokenCommands(program: Command, g: () => Globals): void {
  const tok = program.command('token').description('API tokens (auth.mode "tokens" in blockgate.json): user, project and role, stored as hashes');
  const load = () => {
    const cfg = loadConfig(g().dataDir);
    const auth = validateAuth((cfg as unknown as { auth?: unknown }).auth, `${cfg.dataDir}/${CONFIG_FILE}`);
    return { cfg, auth };
  };
  const save = (cfg: ReturnType<typeof loadConfig>, auth: ReturnType<typeof validateAuth>) => {
    (cfg as unknown as { auth: unknown }).auth = auth;
    saveConfig(cfg, ['auth' as never]);
  };
  tok
    .command('add')
    .description('make a token; it is printed once (only its hash is kept)')
    .requiredOption('--user <id>')
    .requiredOption('--project <id>')
    .option('--role <role>', 'member or admin', 'member')
    .option('--label <text>', 'a name to find it by (token list, token remove)')
    .option('--enable', 'also set auth.mode to "tokens"')
    .action((o: { user: string; project: string; role: string; label?: string; enable?: boolean }) => {
      for (const [k, v] of [['--user', o.user], ['--project', o.project]] as const) if (!ID_RE.test(v)) throw new UsageError(`${k} must be an id of letters, digits, '_', '.', '@', '-'`);
      if (o.role !== 'member' && o.role !== 'admin') throw new UsageError('--role must be member or admin');
      const { cfg, auth } = load();
      const token = `bg-${randomBytes(24).toString('base64url')}`;
      const entry: TokenEntry = { hash: tokenHash(token), user: o.user, project: o.project, role: o.role, ...(o.label ? { label: o.label } : {}), created_at: new Date().toISOString() };
      auth.tokens.push(entry);
      if (o.enable) auth.mode = 'tokens';
      save(cfg, auth);
      printRecord(g().format, { token, user: entry.user, project: entry.project, role: entry.role, label: entry.label ?? null, id: entry.hash.slice(7, 19), mode: auth.mode });
    });
  tok.command('list').action(() => {
    const { auth } = load();
    printRows(g().format, auth.tokens.map((t) => ({ id: t.hash.slice(7, 19), user: t.user, project: t.project, role: t.role, label: t.label ?? '', created_at: t.created_at ?? '' })), ['id', 'user', 'project', 'role', 'label', 'created_at']);
  });
  tok
    .command('remove <id-or-label>')
    .description('revoke a token (by the id token list shows, or its label)')
    .action((ref: string) => {
      const { cfg, auth } = load();
      const hit = auth.tokens.filter((t) => t.hash.slice(7, 19) === ref || t.label === ref);
      if (hit.length !== 1) throw new UsageError(hit.length ? `${hit.length} tokens match ${JSON.stringify(ref)}: use the id` : `no token ${JSON.stringify(ref)}`);
      auth.tokens = auth.tokens.filter((t) => t !== hit[0]);
      save(cfg, auth);
      printRecord(g().format, { removed: ref });
    });
}
