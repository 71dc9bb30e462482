/**
 * Cinder's microversions: `OpenStack-API-Version: volume 3.N` (absent: 3.0), 3.0 to 3.70.
 * A malformed value is 400, one out of range 406 (Cinder's messages); the answer echoes the
 * version in effect with `Vary: OpenStack-API-Version`.
 */
import { ApiError } from './errors.js';

export const MIN_MINOR = 0;
export const MAX_MINOR = 70;
export const MAX_VERSION = `3.${MAX_MINOR}`;
export const MIN_VERSION = `3.${MIN_MINOR}`;

export interface Microversion {
  major: 3;
  minor: number;
}

export const atLeast = (v: Microversion, minor: number): boolean => v.minor >= minor;

export function parseMicroversion(header: string | string[] | undefined): Microversion {
  const raw = Array.isArray(header) ? header.join(',') : header;
  if (!raw) return { major: 3, minor: 0 };
  // several services may be named: "volume 3.40, compute 2.1"
  const mine = raw
    .split(',')
    .map((s) => s.trim())
    .find((s) => /^volume\s/i.test(s));
  if (!mine) return { major: 3, minor: 0 };
  const value = mine.replace(/^volume\s+/i, '').trim();
  if (value.toLowerCase() === 'latest') return { major: 3, minor: MAX_MINOR };
  const m = /^(\d+)\.(\d+)$/.exec(value);
  if (!m) throw new ApiError(400, `API Version String ${value} is of invalid format. Must be of format MajorNum.MinorNum.`);
  const major = Number(m[1]);
  const minor = Number(m[2]);
  if (major !== 3 || minor < MIN_MINOR || minor > MAX_MINOR) throw new ApiError(406, `Version ${value} is not supported by the API. Minimum is ${MIN_VERSION} and maximum is ${MAX_VERSION}.`);
  return { major: 3, minor };
}

export const versionString = (v: Microversion): string => `3.${v.minor}`;

/** the version list of `GET /` (300) and `GET /v3/` (200), as cinder/api/versions.py has it */
export function versionsDoc(origin: string) {
  return {
    versions: [
      {
        id: 'v3.0',
        status: 'CURRENT',
        version: MAX_VERSION,
        min_version: MIN_VERSION,
        updated: '2023-08-31T00:00:00Z',
        links: [
          { rel: 'describedby', type: 'text/html', href: 'https://docs.openstack.org/' },
          { rel: 'self', href: `${origin}/v3/` },
        ],
        'media-types': [{ base: 'application/json', type: 'application/vnd.openstack.volume+json;version=3' }],
      },
    ],
  };
}
