import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultStateDir, openDesktopState, startSwtpm } from './vm-host.js';

let dir: string;
let template: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'df-vmhost-'));
  template = path.join(dir, 'VARS.template');
  writeFileSync(template, Buffer.alloc(4096, 7), { mode: 0o444 });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const ovmf = () => ({ code: '/nonexistent/CODE.fd', vars: template, smm: false });

describe('a desktop\'s state on the hypervisor host', () => {
  it('defaults: $DESKFUSE_VDI_STATE_DIR, else /var/lib as root, else XDG state', () => {
    expect(defaultStateDir({ DESKFUSE_VDI_STATE_DIR: '/srv/vdi' })).toBe('/srv/vdi');
    expect(defaultStateDir({ XDG_STATE_HOME: '/home/u/.st' })).toBe(process.getuid?.() === 0 ? '/var/lib/deskfuse/vdi' : '/home/u/.st/deskfuse/vdi');
  });

  it('makes the variable store from the template once, keeps it, and locks the desktop to one run', () => {
    const root = path.join(dir, 'state');
    const a = openDesktopState(root, 'alice', { ovmf: ovmf(), secureBoot: false, tpm: true });
    expect(a).toMatchObject({ dir: path.join(root, 'alice'), ephemeral: false, vars: path.join(root, 'alice', 'OVMF_VARS.fd'), tpmDir: path.join(root, 'alice', 'tpm') });
    expect(readFileSync(a.vars!).equals(readFileSync(template))).toBe(true);
    expect(readFileSync(path.join(root, 'alice', 'lock'), 'utf8').trim()).toBe(String(process.pid));
    writeFileSync(a.vars!, Buffer.alloc(4096, 9)); // the firmware wrote a boot entry

    // Held by a live process (this one): a throw-away copy, with what the desktop had.
    const b = openDesktopState(root, 'alice', { ovmf: ovmf(), secureBoot: false, tpm: true });
    expect(b.ephemeral).toBe(true);
    expect(b.dir).not.toBe(a.dir);
    expect(readFileSync(b.vars!)[0]).toBe(9);
    b.release();
    expect(existsSync(b.dir)).toBe(false);

    a.release();
    expect(existsSync(path.join(root, 'alice', 'lock'))).toBe(false);
    const c = openDesktopState(root, 'alice', { ovmf: ovmf(), secureBoot: true, tpm: false });
    expect(c.vars).toBe(path.join(root, 'alice', 'OVMF_VARS.secboot.fd')); // one store per firmware build
    expect(readFileSync(path.join(root, 'alice', 'OVMF_VARS.fd'))[0]).toBe(9); // kept
    c.release();
  });

  it('a lock whose process is gone is stale and taken over', () => {
    const root = path.join(dir, 'stale');
    const first = openDesktopState(root, 'bob', { ovmf: null, secureBoot: false, tpm: false });
    first.release();
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout;
    writeFileSync(path.join(root, 'bob', 'lock'), `${dead}\n`);
    const s = openDesktopState(root, 'bob', { ovmf: null, secureBoot: false, tpm: false });
    expect(s.ephemeral).toBe(false);
    expect(s.vars).toBeNull();
    s.release();
  });

  it('swtpm: started on the desktop\'s TPM folder, its socket answers, stopped by its PID', async () => {
    if (spawnSync('swtpm', ['--version']).error) throw new Error('swtpm missing: bash scripts/setup-deps.sh (apt-get install swtpm)');
    const s = openDesktopState(path.join(dir, 'tpm'), 'carol', { ovmf: null, secureBoot: false, tpm: true });
    const t = await startSwtpm(s.tpmDir!);
    expect(existsSync(t.socket)).toBe(true);
    expect(readFileSync(`/proc/${t.pid}/cmdline`, 'utf8')).toContain(s.tpmDir!);
    await t.stop();
    expect(existsSync(`/proc/${t.pid}`)).toBe(false);
    expect(existsSync(path.dirname(t.socket))).toBe(false);
    s.release();
    await expect(startSwtpm(path.join(dir, 'no', 'such', 'dir'), 2000)).rejects.toThrow(/swtpm: the TPM state folder .* does not exist/);
  });
});
