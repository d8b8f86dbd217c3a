import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { envLines } from './postgres.js';

const run = promisify(execFile);
export const RGW_SCRIPT = fileURLToPath(new URL('../../scripts/engines/ceph-rgw.sh', import.meta.url));

/** What `ceph-rgw.sh start|env` prints. */
export interface RgwSettings {
  endpoint: string;
  region: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
}

/** A real single-node Ceph RADOS Gateway started by scripts/engines/ceph-rgw.sh in a temp folder. */
export interface Rgw extends RgwSettings {
  dir: string;
  /** The S3 store URL for a prefix in the cluster's bucket. */
  url(prefix: string): string;
  /** Stop the daemons the script started (by their recorded PIDs) and delete the folder. */
  destroy(): Promise<void>;
}

export function s3Url(s: RgwSettings, prefix: string): string {
  return `s3://${s.bucket}/${prefix}?endpoint=${encodeURIComponent(s.endpoint)}&region=${s.region}`;
}

/** `ceph-rgw.sh start DIR`: creates the cluster or starts it again; reuses a running one. */
export async function rgwStart(dir: string): Promise<RgwSettings> {
  let out: string;
  try {
    out = (await run('bash', [RGW_SCRIPT, 'start', dir], { timeout: 300_000, maxBuffer: 1 << 20 })).stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`scripts/engines/ceph-rgw.sh start failed (Debian packages: scripts/setup-deps.sh engines): ${e.message}\n${e.stderr ?? ''}`);
  }
  const env = envLines(out);
  const need = (k: string): string => {
    const v = env[k];
    if (!v) throw new Error(`ceph-rgw.sh printed no ${k}`);
    return v;
  };
  return {
    endpoint: need('S3_ENDPOINT'),
    region: need('S3_REGION'),
    bucket: need('S3_BUCKET'),
    accessKeyId: need('AWS_ACCESS_KEY_ID'),
    secretAccessKey: need('AWS_SECRET_ACCESS_KEY'),
  };
}

export async function rgwCommand(cmd: 'stop' | 'destroy' | 'pids', dir: string): Promise<string> {
  return (await run('bash', [RGW_SCRIPT, cmd, dir], { timeout: 120_000 })).stdout;
}

/**
 * Start a fresh RGW of the caller's own (≈20–25 s to the first PUT here). Throws with the script's
 * log on failure. Prefer sharedRgw() (test/helpers/engines.ts) unless the test stops radosgw.
 */
export async function startRgw(): Promise<Rgw> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'deskfuse-rgw-'));
  const destroy = async () => {
    await rgwCommand('destroy', dir);
  };
  let s: RgwSettings;
  try {
    s = await rgwStart(dir);
  } catch (err) {
    await destroy().catch(() => {});
    throw err;
  }
  return { ...s, dir, url: (prefix) => s3Url(s, prefix), destroy };
}
