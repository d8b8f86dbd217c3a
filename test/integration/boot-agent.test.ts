import { closeSync, openSync, readSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handOff, type Machine } from '../../src/agent/boot/handoff.js';
import { diskSecret } from '../../src/agent/commands.js';
import { proveEndpoint } from '../../src/endpoint/proof.js';
import { areaSize } from '../../src/agent/state-area.js';
import { dfError } from '../../src/errors.js';
import { makeDisk, prng } from '../helpers/disk.js';
import { cli, ROOT, startInProcess, tempDir } from '../helpers/server.js';

const MAC = '52:54:00:aa:bb:01';
const AGENT = path.join(ROOT, 'dist/initramfs/agent/main.js');
const SIZE = 4 * 1024 * 1024;

/**
 * The boot stage's program on this host, against a disk file: it trades its one-time token, syncs, and
 * then must refuse to reboot a machine that is not in the boot stage (DESKFUSE_BOOT_STAGE unset). A
 * retry after a failure (what /init does on exit 75) goes on with the kept session, not the spent token.
 */
describe('boot-stage agent program', () => {
  let tmp: ReturnType<typeof tempDir>;
  let srv: Awaited<ReturnType<typeof startInProcess>>;
  let image: Buffer;
  let disk: string;

  beforeAll(async () => {
    tmp = tempDir('df-bootagent-');
    srv = await startInProcess(path.join(tmp.dir, 'data'));
    const img = path.join(tmp.dir, 'os.img');
    image = prng(5)(SIZE);
    makeDisk(img, SIZE, [{ at: 0, data: image }]);
    const env = { DESKFUSE_SERVER: srv.url, DESKFUSE_TOKEN: srv.token };
    expect((await cli(['image', 'create', 'os', '--from', img], env)).code).toBe(0);
    expect((await cli(['desktop', 'create', 'alice', '--image', 'os'], env)).code).toBe(0);
    expect((await cli(['endpoint', 'add', MAC, '--desktop', 'alice', '--name', 'lab-pc'], env)).code).toBe(0);
    disk = path.join(tmp.dir, 'endpoint.disk');
    makeDisk(disk, SIZE + areaSize({ virtualSize: SIZE, chunkSize: 64 * 1024 }) + 1024 * 1024, []);
  });
  afterAll(async () => {
    await srv?.close();
    tmp?.cleanup();
  });

  const run = (token: string, sessionFile: string) => execa(process.execPath, [AGENT], {
    reject: false, timeout: 60_000,
    env: {
      DESKFUSE_CMDLINE: `console=ttyS0 deskfuse.server=${srv.url} deskfuse.token=${token} deskfuse.mac=${MAC} deskfuse.action=sync deskfuse.disk=${disk}`,
      DESKFUSE_SESSION_FILE: sessionFile, DESKFUSE_BOOT_STAGE: '',
    },
  });

  it('syncs the disk, keeps the session for a retry, never reboots the host', async () => {
    const script = (await srv.appliance.app.inject({ method: 'GET', url: `/boot/ipxe?mac=${MAC}&platform=pcbios` })).payload;
    const token = /deskfuse\.token=(\S+)/.exec(script)![1]!;
    const session = path.join(tmp.dir, 'session.json');

    const first = await run(token, session);
    expect(first.stdout).toMatch(/@@MARK SESSION .*endpoint=lab-pc desktop=alice action=sync handoff=reboot/);
    expect(first.stdout).toMatch(/@@MARK SYNCED .*version=1 /);
    expect(first.stdout).toContain('DF_ERR_USAGE: not in the deskfuse boot stage');
    expect(first.exitCode).toBe(1);
    const got = Buffer.alloc(SIZE);
    const fd = openSync(disk, 'r');
    readSync(fd, got, 0, SIZE, 0);
    closeSync(fd);
    expect(got.equals(image)).toBe(true);

    // /init's retry: the same token, the kept session; nothing left to write.
    const again = await run(token, session);
    expect(again.stdout).not.toContain('DF_ERR_BOOT_TOKEN_USED');
    expect(again.stdout).toMatch(/@@MARK SYNCED .*version=1 chunks=0/);

    // Without the kept session the token is spent.
    const spent = await run(token, path.join(tmp.dir, 'other-session.json'));
    expect(spent.stdout).toContain('DF_ERR_BOOT_TOKEN_USED');
    expect(spent.stdout).not.toContain('@@MARK SYNCED');
    expect(spent.exitCode).toBe(1);

    const e = (await srv.appliance.app.inject({ method: 'GET', url: `/api/v1/endpoints/${MAC}`, headers: { authorization: `Bearer ${srv.token}` } })).json();
    expect(e).toMatchObject({ name: 'lab-pc', disk: 'clean', diskVersion: 1, lastSync: { result: 'ok', action: 'sync', version: 1 } });
  });

  /**
   * The hand-off after a sync, against the real server's event log. The machine is a stand-in (a real
   * kexec or reboot would take this host down): its `kexec -e` fails the way kexec-tools does when the
   * kernel refuses, and its reboot ends the hand-off with an exception the test catches.
   */
  it('a kexec that fails is recorded in order: kexec hand-off, the error, then the BootNext fallback', async () => {
    const script = (await srv.appliance.app.inject({ method: 'GET', url: `/boot/ipxe?mac=${MAC}&platform=efi` })).payload;
    const token = /deskfuse\.token=(\S+)/.exec(script)![1]!;
    // The disk was provisioned by the agent above: this boot proves its secret like the agent would.
    const secret = await diskSecret(disk);
    expect(secret).not.toBeNull();
    const s = (await srv.appliance.app.inject({ method: 'POST', url: '/boot/session', payload: { token, mac: MAC, platform: 'efi', proof: proveEndpoint(secret!, MAC, token), secureBoot: { enabled: true, lockdown: 'integrity' } } })).json();
    expect(s.token, JSON.stringify(s)).toEqual(expect.any(String));
    const before = (await srv.appliance.app.inject({ method: 'GET', url: `/api/v1/endpoints/${MAC}`, headers: { authorization: `Bearer ${srv.token}` } })).json();
    // What the boot stage saw of Secure Boot is in this boot's `agent` event.
    const agentEv = (before.events as Array<{ seq: number; phase: string; detail: Record<string, unknown> }>).filter((ev) => ev.phase === 'agent').sort((a, b) => b.seq - a.seq)[0];
    expect(agentEv?.detail.secureBoot).toEqual({ enabled: true, lockdown: 'integrity' });
    const report = async (phase: string, detail: Record<string, unknown> = {}) => {
      const r = await srv.appliance.app.inject({ method: 'POST', url: '/boot/events', headers: { authorization: `Bearer ${s.token}` }, payload: { mac: MAC, phase, detail } });
      expect(r.statusCode, r.payload).toBe(201);
    };
    const acts: string[] = [];
    class Rebooted extends Error {}
    const machine: Machine = {
      isUefi: () => true,
      kexecLoad: (d, b) => { acts.push(`kexec-load ${d} ${b.kernel}`); return { syscall: 'kexec_file_load' }; },
      kexecExec: () => { acts.push('kexec-exec'); throw dfError('DF_ERR_TOOL_FAILED', 'kexec -e: kexec_core: Starting new kernel failed: Operation not permitted'); },
      setBootNextToDisk: () => { acts.push('bootnext'); return { num: 1, description: 'UEFI Misc Device' }; },
      reboot: () => { acts.push('reboot'); throw new Rebooted(); },
      powerOff: () => { acts.push('poweroff'); throw new Rebooted(); },
    };
    const marks: string[] = [];
    await expect(handOff({ machine, report, mark: (n) => marks.push(n), say: () => {} },
      { handoff: 'kexec', imageBoot: { partition: 1, kernel: 'vmlinuz', initrd: 'initrd.img', cmdline: 'root=/dev/vda1' } }, disk)).rejects.toBeInstanceOf(Rebooted);
    expect(acts).toEqual([`kexec-load ${disk} vmlinuz`, 'kexec-exec', 'bootnext', 'reboot']);
    expect(marks).toEqual(['KEXEC', 'KEXEC-FAILED', 'BOOTNEXT', 'REBOOT']);

    const e = (await srv.appliance.app.inject({ method: 'GET', url: `/api/v1/endpoints/${MAC}`, headers: { authorization: `Bearer ${srv.token}` } })).json();
    const seen = (e.events as Array<{ seq: number; phase: string; detail: Record<string, unknown> }>)
      .filter((ev) => ev.seq > Math.max(0, ...before.events.map((x: { seq: number }) => x.seq)) && ev.phase !== 'agent' && ev.phase !== 'script')
      .sort((a, b) => a.seq - b.seq);
    expect(seen.map((ev) => [ev.phase, ev.detail.via])).toEqual([['local', 'kexec'], ['error', 'kexec'], ['local', 'bootnext']]);
    expect(seen[0]!.detail).toMatchObject({ via: 'kexec', syscall: 'kexec_file_load' });
    expect(seen[1]!.detail).toMatchObject({ action: 'handoff', stage: 'exec', recovered: true });
    expect(String(seen[1]!.detail.error)).toContain('DF_ERR_TOOL_FAILED: kexec -e: kexec_core');
    // The sync before it succeeded: a recovered hand-off error does not turn the endpoint's last sync into a failure.
    expect(e.lastSync).toMatchObject({ result: 'ok', action: 'sync', version: 1 });

    // A kernel that cannot even be loaded is no hand-off at all: only the error, then BootNext.
    acts.length = 0;
    machine.kexecLoad = () => { acts.push('kexec-load'); throw dfError('DF_ERR_TOOL_FAILED', 'mount /dev/vda1: Invalid argument'); };
    const last = Math.max(...seen.map((x) => x.seq));
    await expect(handOff({ machine, report, mark: () => {}, say: () => {} },
      { handoff: 'kexec', imageBoot: { partition: 1, kernel: 'vmlinuz', cmdline: '' } }, disk)).rejects.toBeInstanceOf(Rebooted);
    expect(acts).toEqual(['kexec-load', 'bootnext', 'reboot']);
    const e2 = (await srv.appliance.app.inject({ method: 'GET', url: `/api/v1/endpoints/${MAC}`, headers: { authorization: `Bearer ${srv.token}` } })).json();
    const seen2 = (e2.events as Array<{ seq: number; phase: string; detail: Record<string, unknown> }>).filter((ev) => ev.seq > last).sort((a, b) => a.seq - b.seq);
    expect(seen2.map((ev) => [ev.phase, ev.detail.via, ev.detail.stage])).toEqual([['error', 'kexec', 'load'], ['local', 'bootnext', undefined]]);
  });
});
