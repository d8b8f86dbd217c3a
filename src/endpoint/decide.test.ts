import { describe, expect, it } from 'vitest';
import { decideBoot, handoffAfter, localBoot, type DesktopFacts } from './decide.js';
import type { EndpointRow } from './model.js';

const NOW = new Date('2026-11-28T12:00:00Z');
const ep = (o: Partial<EndpointRow> = {}): EndpointRow => ({
  id: 'ep-1', name: 'ep-1', macs: ['52:54:00:00:00:01'], uuid: null, serial: null, state: 'enrolled', desktop: 'alice', mode: 'sync',
  bootMethod: 'auto', firmware: 'bios', disk: 'clean', diskVersion: 3, commitRequested: null, lastSeen: null, lastSync: null, createdAt: '', ...o,
});
const desk: DesktopFacts = { head: 3, mode: 'persistent', kexec: false };

describe('decideBoot', () => {
  it.each([
    ['pending', ep({ state: 'pending' }), desk, 'pending'],
    ['pending-reprovision', ep({ state: 'pending-reprovision' }), desk, 'pending'],
    ['disabled', ep({ state: 'disabled' }), desk, 'disabled'],
    ['no desktop', ep({ desktop: null }), undefined, 'unassigned'],
    ['mode local', ep({ mode: 'local', disk: 'in-use' }), desk, 'local'],
  ] as const)('%s → %s', (_n, e, d, kind) => {
    expect(decideBoot(e, 'bios', d, NOW).kind).toBe(kind);
  });

  it('sync when blank, in use, or behind; local when up to date', () => {
    const a = (e: EndpointRow, d = desk) => decideBoot(e, 'bios', d, NOW);
    expect(a(ep({ disk: 'unknown', diskVersion: null }))).toMatchObject({ kind: 'agent', action: 'sync', handoff: 'reboot' });
    expect(a(ep({ disk: 'in-use' }))).toMatchObject({ kind: 'agent', action: 'sync' });
    expect(a(ep({ diskVersion: 2 }))).toMatchObject({ kind: 'agent', action: 'sync', reason: expect.stringContaining('from version 2 to 3') });
    expect(a(ep())).toMatchObject({ kind: 'local', local: 'sanboot' });
    expect(a(ep({ bootMethod: 'exit' }))).toMatchObject({ kind: 'local', local: 'exit' });
    // Up to date, but the disk's secret is not bound yet: one boot through the boot stage binds it.
    expect(a(ep({ secret: 'none' }))).toMatchObject({ kind: 'agent', action: 'sync', reason: expect.stringContaining('secret') });
    expect(a(ep({ secret: 'provisioning' }))).toMatchObject({ kind: 'agent', action: 'sync' });
    expect(a(ep({ secret: 'bound' }))).toMatchObject({ kind: 'local' });
  });

  it('a commit request wins over sync (persistent only) and powers off', () => {
    const asked = '2026-11-28T11:59:30Z'; // 30 s before NOW: the shutdown's own reboot
    expect(decideBoot(ep({ commitRequested: asked, disk: 'in-use' }), 'bios', desk, NOW)).toMatchObject({ kind: 'agent', action: 'commit-poweroff', handoff: 'poweroff' });
    expect(decideBoot(ep({ commitRequested: asked, disk: 'in-use' }), 'bios', { ...desk, mode: 'restore' }, NOW)).toMatchObject({ action: 'sync' });
  });

  it('a commit order outlives its shutdown only for the window: a later power-on commits, syncs and boots', () => {
    const at = (secondsAgo: number) => new Date(NOW.getTime() - secondsAgo * 1000).toISOString();
    const e = (s: number) => ep({ commitRequested: at(s), disk: 'in-use' });
    expect(decideBoot(e(120), 'bios', desk, NOW)).toMatchObject({ action: 'commit-poweroff', handoff: 'poweroff' });
    const late = decideBoot(e(121), 'bios', desk, NOW);
    expect(late).toMatchObject({ kind: 'agent', action: 'sync', handoff: 'reboot', reason: expect.stringContaining('commit, then sync') });
    expect(decideBoot(e(4 * 3600), 'uefi', desk, NOW)).toMatchObject({ action: 'sync', handoff: 'bootnext' });
    // the window is configurable
    expect(decideBoot(e(200), 'bios', desk, NOW, 300_000)).toMatchObject({ action: 'commit-poweroff' });
    expect(decideBoot(e(40), 'bios', desk, NOW, 30_000)).toMatchObject({ action: 'sync' });
    // a stale order on a disk that is clean and current still commits first (the OS ran after the seal)
    expect(decideBoot(ep({ commitRequested: at(600) }), 'bios', desk, NOW)).toMatchObject({ action: 'sync' });
  });

  it('UEFI never boots the disk from iPXE: the boot stage hands off (kexec when declared, else BootNext)', () => {
    expect(decideBoot(ep(), 'uefi', desk, NOW)).toMatchObject({ kind: 'agent', action: 'local', handoff: 'bootnext' });
    expect(decideBoot(ep(), 'uefi', { ...desk, kexec: true }, NOW)).toMatchObject({ kind: 'agent', action: 'local', handoff: 'kexec' });
    expect(decideBoot(ep({ disk: 'unknown' }), 'uefi', desk, NOW)).toMatchObject({ action: 'sync', handoff: 'bootnext' });
  });

  it('a recent failure boots the disk as it is instead of looping; an old one retries', () => {
    const failed = (at: string) => ep({ disk: 'in-use', lastSync: { result: 'error', action: 'sync', at, error: 'boom' } });
    expect(decideBoot(failed('2026-11-28T11:55:00Z'), 'bios', desk, NOW)).toMatchObject({ kind: 'local', local: 'sanboot' });
    expect(decideBoot(failed('2026-11-28T11:55:00Z'), 'uefi', desk, NOW)).toMatchObject({ kind: 'local', local: 'exit' });
    expect(decideBoot(failed('2026-11-28T11:00:00Z'), 'bios', desk, NOW)).toMatchObject({ kind: 'agent', action: 'sync' });
  });

  it('local boot and hand-off tables', () => {
    expect(localBoot('kexec', 'bios', true)).toBe('agent');
    expect(localBoot('kexec', 'bios', false)).toBe('sanboot');
    expect(localBoot('sanboot', 'uefi', false)).toBe('agent');
    expect(handoffAfter('sync', 'kexec', 'bios', true)).toBe('kexec');
    expect(handoffAfter('sync', 'auto', 'bios', true)).toBe('reboot');
    expect(handoffAfter('sync', 'bootnext', 'uefi', true)).toBe('bootnext');
  });
});
