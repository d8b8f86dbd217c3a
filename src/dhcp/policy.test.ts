import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { decodeDhcp } from './packet.js';
import { classify, tableBooter, type Client } from './policy.js';

const capture = (name: string) =>
  decodeDhcp(Buffer.from(readFileSync(path.resolve(import.meta.dirname, `../../test/fixtures/dhcp/${name}.hex`), 'utf8').trim(), 'hex'));

const client = (over: Partial<Client>): Client => ({
  mac: '52:54:00:00:00:01', arch: undefined, arches: [], isPxe: true, isHttpBoot: false, isIpxe: false,
  userClass: [], uuid: undefined, vendorClass: 'PXEClient', hostname: undefined, ...over,
});
const ALL = new Set(['undionly.kpxe', 'snponly.efi', 'ipxe.efi', 'snponly-arm64.efi']);
const SCRIPT = 'http://10.0.0.1:8080/boot/ipxe';

describe('classify', () => {
  it('recognises real clients', () => {
    expect(classify(capture('udhcpc-discover'))).toMatchObject({ isPxe: false, isIpxe: false, arch: undefined, vendorClass: 'udhcp 1.35.0' });
    expect(classify(capture('ipxe-bios-discover'))).toMatchObject({
      mac: '52:54:00:12:34:56', isPxe: true, isIpxe: true, arch: 0, arches: [0], userClass: ['iPXE'], uuid: '6a1e5c0e-8d2b-4f3a-9c77-0123456789ab',
    });
    expect(classify(capture('ovmf-pxe-discover'))).toMatchObject({ isPxe: true, isIpxe: false, arch: 7 });
  });
});

describe('tableBooter', () => {
  const booter = tableBooter({ scriptUrl: SCRIPT, available: ALL });

  it.each([
    [0, 'undionly.kpxe'], [7, 'snponly.efi'], [9, 'snponly.efi'], [11, 'snponly-arm64.efi'],
  ])('arch %i gets %s', (arch, file) => {
    expect(booter.bootSpec(client({ arch, arches: [arch] }))).toEqual({ file });
  });

  it('gives iPXE the script URL with no-pxedhcp, whatever its arch (no chainload loop)', () => {
    expect(booter.bootSpec(client({ arch: 0, arches: [0], isIpxe: true, userClass: ['iPXE'] }))).toEqual({ file: SCRIPT, ipxeNoPxeDhcp: true });
  });

  it('answers nothing for binaries the server lacks or unknown arches', () => {
    expect(booter.bootSpec(client({ arch: 6, arches: [6] }))).toBeNull();
    expect(booter.bootSpec(client({ arch: 99, arches: [99] }))).toBeNull();
    expect(booter.bootSpec(client({ arch: 16, arches: [16] }))).toBeNull();
    expect(tableBooter({ scriptUrl: SCRIPT, available: new Set() }).bootSpec(client({ arch: 0, arches: [0] }))).toBeNull();
  });

  it('takes the first of several arches it can serve; no option 93 means BIOS', () => {
    expect(booter.bootSpec(client({ arch: 6, arches: [6, 7] }))).toEqual({ file: 'snponly.efi' });
    expect(booter.bootSpec(client({}))).toEqual({ file: 'undionly.kpxe' });
  });

  it('can prefer ipxe.efi, serve HTTP boot, and name another TFTP server', () => {
    const b = tableBooter({ scriptUrl: SCRIPT, available: ALL, preferIpxeEfi: true, httpBootUrl: 'http://h/ipxe.efi', tftpServer: '10.0.0.9' });
    expect(b.bootSpec(client({ arch: 7, arches: [7] }))).toEqual({ file: 'ipxe.efi', tftpServer: '10.0.0.9' });
    expect(b.bootSpec(client({ arch: 16, arches: [16], isHttpBoot: true }))).toEqual({ file: 'http://h/ipxe.efi' });
  });

  it('Secure Boot: x64 UEFI PXE clients (arch 7, 9) get shim; BIOS, ARM and iPXE itself are unchanged', () => {
    const b = tableBooter({ scriptUrl: SCRIPT, available: ALL, secureBootFile: 'shimx64.efi', tftpServer: '10.0.0.9' });
    expect(b.bootSpec(client({ arch: 7, arches: [7] }))).toEqual({ file: 'shimx64.efi', tftpServer: '10.0.0.9' });
    expect(b.bootSpec(client({ arch: 9, arches: [9] }))).toEqual({ file: 'shimx64.efi', tftpServer: '10.0.0.9' });
    expect(b.bootSpec(client({ arch: 0, arches: [0] }))).toEqual({ file: 'undionly.kpxe', tftpServer: '10.0.0.9' });
    expect(b.bootSpec(client({ arch: 11, arches: [11] }))).toEqual({ file: 'snponly-arm64.efi', tftpServer: '10.0.0.9' });
    expect(b.bootSpec(client({ arch: 7, arches: [7], isIpxe: true }))).toMatchObject({ file: SCRIPT });
  });
});
