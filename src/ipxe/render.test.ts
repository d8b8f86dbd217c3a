import { describe, expect, it } from 'vitest';
import type { BootDecision } from '../endpoint/decide.js';
import { bootScript, chainScript, loadTemplates, render } from './render.js';

const t = loadTemplates();
const ctx = {
  base: 'http://10.91.0.1:8080', mac: '52:54:00:12:34:56', endpoint: 'ep-525400123456', self: 'http://10.91.0.1:8080/boot/ipxe?mac=52%3A54%3A00%3A12%3A34%3A56&platform=pcbios',
  kernelArgs: 'console=tty0 console=ttyS0,115200 quiet', firmware: 'bios' as 'bios' | 'uefi', retrySeconds: 10,
};
const golden = (name: string) => `../../test/fixtures/ipxe/${name}.ipxe`;

describe('iPXE scripts (golden)', () => {
  const cases: Array<[string, BootDecision, Partial<typeof ctx> & { token?: string; agentBase?: string; caFingerprint?: string }]> = [
    ['pending', { kind: 'pending', reason: 'waiting for an admin to approve this endpoint' }, {}],
    ['pending-reprovision', { kind: 'pending', reason: 'the disk did not prove the endpoint secret: waiting for an admin to reprovision this endpoint', reprovision: true }, {}],
    ['unassigned', { kind: 'unassigned', reason: 'no desktop is assigned to this endpoint' }, {}],
    ['sync-bios', { kind: 'agent', action: 'sync', reason: 'first boot: provision the disk', handoff: 'reboot' }, { token: 'dfb_TESTTOKENtesttoken0123456789' }],
    ['commit-uefi', { kind: 'agent', action: 'commit-poweroff', reason: 'the OS asked for a commit at shutdown', handoff: 'poweroff' }, { token: 'dfb_TESTTOKENtesttoken0123456789', firmware: 'uefi' }],
    // TLS on: the files stay on HTTP (firmware), the agent gets the https URL and the CA to pin.
    ['sync-bios-tls', { kind: 'agent', action: 'sync', reason: 'first boot: provision the disk', handoff: 'reboot' }, {
      token: 'dfb_TESTTOKENtesttoken0123456789', agentBase: 'https://10.91.0.1:8443',
      caFingerprint: '0F:1E:2D:3C:4B:5A:69:78:87:96:A5:B4:C3:D2:E1:F0:0F:1E:2D:3C:4B:5A:69:78:87:96:A5:B4:C3:D2:E1:F0',
    }],
    ['local-sanboot', { kind: 'local', reason: 'up to date at version 3', local: 'sanboot' }, {}],
    ['local-exit-uefi', { kind: 'local', reason: 'the last boot-time sync failed (x); booting the disk as it is', local: 'exit' }, { firmware: 'uefi' }],
    ['disabled', { kind: 'disabled', reason: 'this endpoint is disabled', local: 'sanboot' }, {}],
  ];
  it.each(cases)('%s', async (name, d, over) => {
    const s = bootScript(t, d, { ...ctx, ...over });
    expect(s.startsWith('#!ipxe\n')).toBe(true);
    await expect(s).toMatchFileSnapshot(golden(name));
  });

  it('chain', async () => {
    await expect(chainScript(t, 'http://10.91.0.1:8080')).toMatchFileSnapshot(golden('chain'));
  });

  it('values are never code: line breaks and ${ are refused; missing variables too', () => {
    expect(() => render('x {{a}}', { a: 'a\nchain http://evil' })).toThrow(/line break/);
    expect(() => render('x {{a}}', { a: '${net0/ip}' })).toThrow(/line break or/);
    expect(() => render('x {{b}}', {})).toThrow(/no value/);
    expect(() => bootScript(t, { kind: 'agent', action: 'sync', reason: 'r', handoff: 'reboot' }, ctx)).toThrow(/boot token/);
  });
});
