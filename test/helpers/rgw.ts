import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const SCRIPT = fileURLToPath(new URL('../../scripts/engines/ceph-rgw.sh', import.meta.url));

/** A real single-node Ceph RADOS Gateway started by scripts/engines/ceph-rgw.sh in a temp folder. */
export interface Rgw {
  dir: string;
  endpoint: string;
  region: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** The S3 store URL for a prefix in the cluster's bucket. */
  url(prefix: string): string;
  /** Stop the daemons the script started (by their recorded PIDs) and delete the folder. */
  destroy(): Promise<void>;
}

/** Start a fresh RGW (≈20–25 s to the first PUT here). Throws with the script's log on failure. */
export async function startRgw(): Promise<Rgw> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'deskfuse-rgw-'));
  const destroy = async () => {
    await run('bash', [SCRIPT, 'destroy', dir], { timeout: 120_000 });
  };
  let out: string;
  try {
    out = (await run('bash', [SCRIPT, 'start', dir], { timeout: 300_000, maxBuffer: 1 << 20 })).stdout;
  } catch (err) {
    await destroy().catch(() => {});
    const e = err as { stderr?: string; message: string };
    throw new Error(`scripts/engines/ceph-rgw.sh start failed (Debian packages: scripts/setup-deps.sh engines): ${e.message}\n${e.stderr ?? ''}`);
  }
  const env = Object.fromEntries(out.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  const need = (k: string): string => {
    const v = env[k];
    if (!v) throw new Error(`ceph-rgw.sh printed no ${k}`);
    return v;
  };
  const endpoint = need('S3_ENDPOINT');
  const region = need('S3_REGION');
  const bucket = need('S3_BUCKET');
  return {
    dir,
    endpoint,
    region,
    bucket,
    accessKeyId: need('AWS_ACCESS_KEY_ID'),
    secretAccessKey: need('AWS_SECRET_ACCESS_KEY'),
    url: (prefix) => `s3://${bucket}/${prefix}?endpoint=${encodeURIComponent(endpoint)}&region=${region}`,
    destroy,
  };
}
