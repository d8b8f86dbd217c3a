import { parseServers } from '../../api/client.js';
import { dfError } from '../../errors.js';
import { normalizeMac } from '../../endpoint/model.js';
import { normalizeFingerprint } from '../../tls/fingerprint.js';

/** What the iPXE script put on the boot stage's kernel command line (ipxe/agent.ipxe). */
export interface BootParams {
  /** `deskfuse.server=`: one base URL or several, comma-separated (normalized: no trailing slash). */
  server: string;
  token: string;
  mac: string;
  action: 'sync' | 'commit-poweroff' | 'local';
  /** `deskfuse.ca=sha256:HEX`: the fingerprint of the CA the agent pins for an https server (`AB:CD:…`). */
  ca?: string;
  /** Disk override (`deskfuse.disk=/dev/sdb`); default: the first fixed disk. */
  disk?: string;
  debug: boolean;
}

/** `a=b c "d=e f"` → {a: 'b', c: '', d: 'e f'} (the kernel's own quoting rules). */
export function parseCmdline(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of text.trim().matchAll(/(?:[^\s"]+|"[^"]*")+/g)) {
    const word = m[0].replace(/"/g, '');
    const i = word.indexOf('=');
    if (i < 0) out[word] = '';
    else out[word.slice(0, i)] = word.slice(i + 1);
  }
  return out;
}

export function bootParams(args: Record<string, string>): BootParams {
  const problems: string[] = [];
  const given = args['deskfuse.server'] ?? '';
  let server = '';
  try {
    server = parseServers(given).join(',');
  } catch {
    problems.push(`deskfuse.server: expected http://HOST[:PORT], or several separated by commas, got ${JSON.stringify(given)}`);
  }
  const token = args['deskfuse.token'] ?? '';
  if (!/^dfb_[A-Za-z0-9_-]{16,}$/.test(token)) problems.push('deskfuse.token: missing or malformed');
  const mac = normalizeMac(args['deskfuse.mac'] ?? '');
  if (!mac) problems.push(`deskfuse.mac: expected a MAC address, got ${JSON.stringify(args['deskfuse.mac'] ?? '')}`);
  const action = args['deskfuse.action'] ?? 'sync';
  if (!['sync', 'commit-poweroff', 'local'].includes(action)) problems.push(`deskfuse.action: expected sync, commit-poweroff or local, got ${JSON.stringify(action)}`);
  let ca: string | undefined;
  if (args['deskfuse.ca'] !== undefined) {
    try {
      ca = normalizeFingerprint(args['deskfuse.ca']);
    } catch {
      problems.push(`deskfuse.ca: expected sha256:<64 hex digits>, got ${JSON.stringify(args['deskfuse.ca'])}`);
    }
  }
  if (problems.length) throw dfError('DF_ERR_USAGE', `the kernel command line is not a deskfuse boot:\n  - ${problems.join('\n  - ')}`, { problems });
  return {
    server, token, mac: mac!, action: action as BootParams['action'],
    ...(ca ? { ca } : {}), ...(args['deskfuse.disk'] ? { disk: args['deskfuse.disk'] } : {}), debug: args['deskfuse.debug'] === '1',
  };
}
