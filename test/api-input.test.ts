/**
 * Bad input to the API: malformed JSON, unknown keys, wrong types, absent and unknown ids, a
 * too-small target, an incremental with no parent, another project's volume, bad queries and
 * microversions. Each gets its documented status and Cinder error body, and the catalog and
 * the repository are unchanged.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { cliJson, tmpDir, treeState } from './helpers/core.js';
import { type ApiDaemon, http, startApi, until, waitBackup, waitVolume } from './helpers/api.js';
import type { JobRecord } from '../catalog/jobs.js';
import { controlRequest } from '../gateway/instant/control.js';
import { Appliance } from '../gateway/appliance.js';
import { loadConfig } from '../gateway/config.js';
import { Heartbeat } from '../gateway/api/heartbeat.js';

const MiB = 1024 * 1024;

async function state(d: ApiDaemon) {
  const b = await http(d, 'GET', '/v3/backups/detail?all_tenants=1');
  const v = await http(d, 'GET', '/v3/volumes/detail?all_tenants=1');
  const s = await http(d, 'GET', '/v3/snapshots/detail?all_tenants=1');
  const q = await http(d, 'GET', '/v3/os-quota-sets/p1?usage=True');
  return { b: b.json, v: v.json, s: s.json, q: q.json, repo: treeState(path.join(d.dataDir, 'repo')), volumes: treeState(path.join(d.dataDir, 'volumes')) };
}

test('bad input is refused with Cinder status and body, and changes nothing', async (t) => {
  const dir = tmpDir(t);
  const data = path.join(dir, 'data');
  const img = path.join(dir, 'src.img');
  fs.writeFileSync(img, randomBytes(4 * MiB));
  fs.writeFileSync(path.join(dir, 'tiny.img'), Buffer.alloc(MiB));
  fs.writeFileSync(path.join(dir, 'fresh.img'), randomBytes(MiB));
  const src = await cliJson<{ id: string }>(data, ['volume', 'create', '--name', 'src', '--file', img, '--project', 'p1']);
  const tiny = await cliJson<{ id: string }>(data, ['volume', 'create', '--name', 'tiny', '--file', path.join(dir, 'tiny.img'), '--project', 'p1']);
  const fresh = await cliJson<{ id: string }>(data, ['volume', 'create', '--name', 'fresh', '--file', path.join(dir, 'fresh.img'), '--project', 'p1']);
  const d = await startApi(t, data);
  const made = await http(d, 'POST', '/v3/backups', { backup: { volume_id: src.id, name: 'b1' } });
  t.is(made.status, 202);
  const b1 = (made.json as { backup: { id: string } }).backup.id;
  t.is(await waitBackup(d, b1), 'available');
  // the job ends after the commit: the volume leaves backing-up then
  t.is(await waitVolume(d, src.id, ['available']), 'available');
  await until('the job to end', async () => ((await controlRequest<JobRecord[]>(data, 'GET', '/jobs')).every((j) => j.status === 'done') ? true : undefined));
  const before = await state(d);

  const expect = async (what: string, r: Promise<{ status: number; json: unknown }>, status: number, fault: string, message: RegExp) => {
    const x = await r;
    t.is(x.status, status, what);
    const body = x.json as Record<string, { message: string; code: number }>;
    t.deepEqual(Object.keys(body ?? {}), [fault], `${what}: ${JSON.stringify(body)}`);
    t.is(body?.[fault]?.code, status, what);
    t.regex(body?.[fault]?.message ?? '', message, what);
  };

  await expect('malformed JSON', http(d, 'POST', '/v3/backups', '{"backup": {"volume_id": '), 400, 'badRequest', /Malformed request body/);
  await expect('a JSON array', http(d, 'POST', '/v3/backups', '[]'), 400, 'badRequest', /is not of type 'object'/);
  await expect('an empty body', http(d, 'POST', `/v3/backups/${b1}/action`, ''), 400, 'badRequest', /Invalid input/);
  await expect('unknown key', http(d, 'POST', '/v3/backups', { backup: { volume_id: src.id, colour: 'red' } }), 400, 'badRequest', /Additional properties are not allowed \('colour' was unexpected\)/);
  await expect('unknown top-level key', http(d, 'POST', '/v3/backups', { backup: { volume_id: src.id }, extra: 1 }), 400, 'badRequest', /'extra' was unexpected/);
  await expect('wrong type (boolean as string)', http(d, 'POST', '/v3/backups', { backup: { volume_id: src.id, incremental: 'yes' } }), 400, 'badRequest', /"yes" is not of type 'boolean'/);
  await expect('wrong type (id as number)', http(d, 'POST', '/v3/backups', { backup: { volume_id: 12 } }), 400, 'badRequest', /12 is not of type 'string'/);
  await expect('wrong type (size as string)', http(d, 'POST', '/v3/volumes', { volume: { size: '1' } }), 400, 'badRequest', /"1" is not of type 'integer'/);
  await expect('size 0', http(d, 'POST', '/v3/volumes', { volume: { size: 0 } }), 400, 'badRequest', /must be >= 1/);
  await expect('absent volume id', http(d, 'POST', '/v3/backups', { backup: { name: 'x' } }), 400, 'badRequest', /'volume_id' is a required property/);
  await expect('unknown volume', http(d, 'POST', '/v3/backups', { backup: { volume_id: 'no-such-volume' } }), 404, 'itemNotFound', /^Volume no-such-volume could not be found\.$/);
  await expect('unknown backup', http(d, 'GET', '/v3/backups/0b5bd6e8-1111-4111-8111-111111111111'), 404, 'itemNotFound', /^Backup 0b5bd6e8-1111-4111-8111-111111111111 could not be found\.$/);
  await expect('OSC probing a volume named None', http(d, 'GET', '/v3/volumes/None'), 404, 'itemNotFound', /Volume None could not be found/);
  await expect('delete of an unknown backup', http(d, 'DELETE', '/v3/backups/nope'), 404, 'itemNotFound', /Backup nope could not be found/);
  await expect('restore of an unknown backup', http(d, 'POST', '/v3/backups/nope/restore', { restore: { volume_id: null, name: null } }), 404, 'itemNotFound', /Backup nope/);
  await expect('restore into an unknown volume', http(d, 'POST', `/v3/backups/${b1}/restore`, { restore: { volume_id: 'nope' } }), 404, 'itemNotFound', /Volume nope could not be found/);
  await expect('too-small target', http(d, 'POST', `/v3/backups/${b1}/restore`, { restore: { volume_id: tiny.id } }), 400, 'badRequest', /cannot be smaller than the backup size/);
  await expect('incremental with no parent', http(d, 'POST', '/v3/backups', { backup: { volume_id: fresh.id, incremental: true } }), 400, 'badRequest', /^Invalid backup: No backups available to do an incremental backup\.$/);
  await expect("another project's volume", http(d, 'POST', '/v3/backups', { backup: { volume_id: src.id } }, { 'x-user-id': 'bob', 'x-project-id': 'p2' }), 404, 'itemNotFound', /Volume .* could not be found/);
  await expect("another project's backup", http(d, 'GET', `/v3/p2/backups/${b1}`, undefined, { 'x-user-id': 'bob', 'x-project-id': 'p2' }), 404, 'itemNotFound', /could not be found/);
  await expect('a project in the URL that is not the caller\'s', http(d, 'GET', '/v3/p9/backups', undefined, { 'x-user-id': 'bob', 'x-project-id': 'p2' }), 400, 'badRequest', /doesn't match Context's project_id 'p2'/);
  await expect('a member resetting a state', http(d, 'POST', `/v3/backups/${b1}/action`, { 'os-reset_status': { status: 'error' } }, { 'x-user-id': 'alice', 'x-project-id': 'p1' }), 403, 'forbidden', /Policy/);
  await expect('two actions at once', http(d, 'POST', `/v3/backups/${b1}/action`, { 'os-reset_status': { status: 'error' }, 'os-force_delete': null }), 400, 'badRequest', /must NOT have more than 1 properties/);
  await expect('an unknown action', http(d, 'POST', `/v3/backups/${b1}/action`, { 'os-detonate': {} }), 400, 'badRequest', /'os-detonate' was unexpected/);
  await expect('a state reset-state does not take', http(d, 'POST', `/v3/backups/${b1}/action`, { 'os-reset_status': { status: 'creating' } }), 400, 'badRequest', /must be equal to one of the allowed values/);
  await expect('an unknown query key', http(d, 'GET', '/v3/backups/detail?colour=red'), 400, 'badRequest', /'colour' was unexpected/);
  await expect('a bad limit', http(d, 'GET', '/v3/backups/detail?limit=-1'), 400, 'badRequest', /must match pattern/);
  await expect('an unknown sort key', http(d, 'GET', '/v3/backups/detail?sort=colour:asc'), 400, 'badRequest', /Invalid sort key: colour/);
  await expect('an unknown marker', http(d, 'GET', '/v3/backups/detail?marker=nope'), 400, 'badRequest', /Marker nope could not be found/);
  await expect('a malformed microversion', http(d, 'GET', '/v3/backups', undefined, { 'openstack-api-version': 'volume 3.x' }), 400, 'badRequest', /invalid format/);
  await expect('a microversion out of range', http(d, 'GET', '/v3/backups', undefined, { 'openstack-api-version': 'volume 3.99' }), 406, 'computeFault', /Version 3\.99 is not supported by the API\. Minimum is 3\.0 and maximum is 3\.70\./);
  await expect('update below 3.9', http(d, 'PUT', `/v3/backups/${b1}`, { backup: { name: 'x' } }), 404, 'itemNotFound', /could not be found/);
  await expect('a quota key blockgate does not keep', http(d, 'PUT', '/v3/os-quota-sets/p1', { quota_set: { volumes: 5 } }), 400, 'badRequest', /'volumes' was unexpected/);
  await expect('a negative quota', http(d, 'PUT', '/v3/os-quota-sets/p1', { quota_set: { backups: -5 } }), 400, 'badRequest', /must be >= -1/);
  await expect('an unknown route', http(d, 'GET', '/v3/backups/x/y/z'), 404, 'itemNotFound', /could not be found/);
  await expect('a volume name that would be a path', http(d, 'POST', '/v3/volumes', { volume: { size: 1, name: '../etc' } }), 400, 'badRequest', /invalid volume name/);
  await expect('a snapshot of a file volume without reflinks', http(d, 'POST', '/v3/snapshots', { snapshot: { volume_id: src.id, name: 's' } }), 400, 'badRequest', /filesystem without reflinks/);

  t.deepEqual(await state(d), before, 'nothing changed');

  // discovery, both prefixes, the microversion echoed
  const root = await fetch(`${d.url}/`);
  t.is(root.status, 300);
  t.like(((await root.json()) as { versions: unknown[] }).versions[0], { id: 'v3.0', version: '3.70', min_version: '3.0', status: 'CURRENT' });
  const v3 = await fetch(`${d.url}/v3/`);
  t.is(v3.status, 200);
  const both = await Promise.all(['/v3/backups', '/v3/p1/backups'].map((p) => http(d, 'GET', p)));
  t.deepEqual(both[0]!.json, both[1]!.json);
  const hv = await fetch(`${d.url}/v3/backups/${b1}`, { headers: { 'x-user-id': 'admin', 'x-project-id': 'p1', 'openstack-api-version': 'volume 3.43' } });
  t.is(hv.headers.get('openstack-api-version'), 'volume 3.43');
  const shown = ((await hv.json()) as { backup: Record<string, unknown> }).backup;
  t.true('metadata' in shown && !('user_id' in shown), 'fields follow the microversion');

  // pages: limit, next links with an absolute href, with_count
  const b2 = ((await http(d, 'POST', '/v3/backups', { backup: { volume_id: fresh.id, name: 'b2' } })).json as { backup: { id: string } }).backup.id;
  t.is(await waitBackup(d, b2), 'available');
  const p1 = (await http(d, 'GET', '/v3/backups/detail?limit=1&with_count=True&sort=name:asc')).json as { backups: { name: string }[]; backups_links: { rel: string; href: string }[]; count: number };
  t.deepEqual(p1.backups.map((b) => b.name), ['b1']);
  t.is(p1.count, 2);
  t.is(p1.backups_links[0]!.rel, 'next');
  t.true(p1.backups_links[0]!.href.startsWith(`${d.url}/v3/backups/detail?`));
  const p2 = (await http(d, 'GET', p1.backups_links[0]!.href.slice(d.url.length))).json as { backups: { name: string }[]; backups_links?: unknown };
  t.deepEqual(p2.backups.map((b) => b.name), ['b2']);
  t.is(p2.backups_links, undefined, 'no next link on the last page');
  // a volume from a backup (what backup-restore --volume-type sends at 3.47+)
  const fromBackup = await http(d, 'POST', '/v3/volumes', { volume: { size: 1, name: 'vt', backup_id: b1 } });
  t.is(fromBackup.status, 202);
  const vt = (fromBackup.json as { volume: { id: string; name: string } }).volume;
  t.is(vt.name, 'vt');
  t.is(await waitVolume(d, vt.id, ['available']), 'available');
  t.true(fs.readFileSync(path.join(data, 'volumes', 'vt.img')).equals(fs.readFileSync(img)));
});

test('service list: up while the daemon beats; its record shows down once the heartbeat is older than the down time', async (t) => {
  const data = path.join(tmpDir(t), 'data');
  const d = await startApi(t, data);
  const services = ((await http(d, 'GET', '/v3/os-services')).json as { services: { binary: string; host: string; state: string; updated_at: string }[] }).services;
  t.is(services.length, 1);
  t.like(services[0], { binary: 'cinder-backup', state: 'up' });
  await d.stop('SIGKILL');
  const app = await Appliance.open(loadConfig(data));
  t.teardown(() => app.close());
  const hb = new Heartbeat(app.catalog.env, services[0]!.host, 1000);
  const down = await until('the dead daemon to show down', () => (hb.list()[0]?.state === 'down' ? hb.list()[0] : undefined));
  t.is(down.host, services[0]!.host);
});
