import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { desktopUuid, libvirtXml, nbdUrl, pickOvmf, qemuArgs, type FirmwareDescriptor, type VmSpec } from './launch.js';

const spec: VmSpec = {
  name: 'deskfuse-alice-0123456789', host: '10.0.0.1', port: 10809, exportName: 'session/0123456789:dfv_S3cr-t_x',
  memoryMiB: 2048, cpus: 2, accel: 'tcg', vnc: null, net: 'user',
};

describe('VM launch', () => {
  it('QEMU drives the session export with its own NBD client, boots from it, serial on stdio', () => {
    expect(qemuArgs(spec, ['-no-reboot'])).toEqual([
      '-name', 'deskfuse-alice-0123456789', '-accel', 'tcg', '-cpu', 'max', '-machine', 'pc', '-m', '2048', '-smp', '2', '-nodefaults', '-no-user-config',
      '-blockdev', 'driver=nbd,node-name=disk0,server.type=inet,server.host=10.0.0.1,server.port=10809,export=session/0123456789:dfv_S3cr-t_x',
      '-device', 'virtio-blk-pci,drive=disk0,bootindex=1', '-nic', 'user,model=virtio-net-pci',
      '-display', 'none', '-serial', 'stdio', '-monitor', 'none', '-no-reboot',
    ]);
  });

  it('KVM uses the host CPU; VNC replaces the serial console; QEMU option commas are doubled', () => {
    const a = qemuArgs({ ...spec, accel: 'kvm', vnc: 3, net: 'none', name: 'a,b' });
    expect(a.slice(0, 6)).toEqual(['-name', 'a,,b', '-accel', 'kvm', '-cpu', 'host']);
    expect(a).toContain('-vnc');
    expect(a[a.indexOf('-vnc') + 1]).toBe('127.0.0.1:3'); // no password: reach it through an SSH tunnel
    expect(a).not.toContain('-nic');
  });

  it('TLS: the credentials object and tls-creds on the NBD blockdev (x509 or PSK)', () => {
    const x = qemuArgs({ ...spec, tls: { kind: 'x509', dir: '/etc/deskfuse/nbd,ca' } });
    expect(x.slice(x.indexOf('-object'), x.indexOf('-object') + 4)).toEqual([
      '-object', 'tls-creds-x509,id=nbdtls0,dir=/etc/deskfuse/nbd,,ca,endpoint=client',
      '-blockdev', 'driver=nbd,node-name=disk0,server.type=inet,server.host=10.0.0.1,server.port=10809,export=session/0123456789:dfv_S3cr-t_x,tls-creds=nbdtls0',
    ]);
    const p = qemuArgs({ ...spec, tls: { kind: 'psk', dir: '/etc/deskfuse/psk', username: 'hv1' } });
    expect(p[p.indexOf('-object') + 1]).toBe('tls-creds-psk,id=nbdtls0,dir=/etc/deskfuse/psk,username=hv1,endpoint=client');
    expect(p[p.indexOf('-blockdev') + 1]).toMatch(/,tls-creds=nbdtls0$/);
    expect(qemuArgs(spec)).not.toContain('-object');
  });

  it('nbd URLs bracket IPv6 hosts; nbds:// with TLS', () => {
    expect(nbdUrl({ ...spec, tls: true })).toBe('nbds://10.0.0.1:10809/session/0123456789:dfv_S3cr-t_x');
    expect(nbdUrl(spec)).toBe('nbd://10.0.0.1:10809/session/0123456789:dfv_S3cr-t_x');
    expect(nbdUrl({ ...spec, host: 'fd00::1' })).toBe('nbd://[fd00::1]:10809/session/0123456789:dfv_S3cr-t_x');
  });

  it('renders the libvirt domain (golden)', async () => {
    await expect(libvirtXml({ ...spec, vnc: 1 })).toMatchFileSnapshot('../../test/fixtures/vdi/domain-tcg-vnc.xml');
    await expect(libvirtXml({ ...spec, accel: 'kvm', net: 'none', name: 'x<&>"\'' })).toMatchFileSnapshot('../../test/fixtures/vdi/domain-kvm.xml');
    await expect(libvirtXml({ ...spec, tls: { kind: 'x509', dir: '/etc/pki/libvirt-nbd' } })).toMatchFileSnapshot('../../test/fixtures/vdi/domain-tls.xml');
  });

  const uefi: VmSpec = { ...spec, firmware: 'uefi', uuid: desktopUuid('alice'), desktop: 'alice', run: { ovmf: { code: '/fw/CODE.fd', vars: '/state/alice/OVMF_VARS.fd', smm: false } } };
  const after = (a: string[], flag: string) => a.flatMap((x, i) => (x === flag ? [a[i + 1]!] : []));

  it('UEFI: q35, OVMF code read-only and the desktop\'s own variable store as pflash, the desktop\'s SMBIOS uuid', () => {
    const a = qemuArgs(uefi);
    expect(after(a, '-machine')).toEqual(['q35']);
    expect(after(a, '-uuid')).toEqual([desktopUuid('alice')]);
    expect(after(a, '-drive')).toEqual(['if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd', 'if=pflash,format=raw,unit=1,file=/state/alice/OVMF_VARS.fd']);
    expect(a).not.toContain('-global');
    expect(() => qemuArgs({ ...uefi, run: {} })).toThrow(/OVMF/);
    expect(() => qemuArgs({ ...spec, secureBoot: true })).toThrow(/UEFI/);
  });

  it('Secure Boot: SMM on q35, the flash writable from SMM only, no S3', () => {
    const a = qemuArgs({ ...uefi, secureBoot: true, run: { ovmf: { code: '/fw/SB.fd', vars: '/state/alice/OVMF_VARS.secboot.fd', smm: true } } });
    expect(after(a, '-machine')).toEqual(['q35,smm=on']);
    expect(after(a, '-global')).toEqual(['driver=cfi.pflash01,property=secure,value=on', 'ICH9-LPC.disable_s3=1']);
    expect(after(a, '-drive')[0]).toBe('if=pflash,format=raw,unit=0,readonly=on,file=/fw/SB.fd');
  });

  it('TPM 2.0: swtpm\'s socket as a TPM emulator, CRB on UEFI and TIS on BIOS', () => {
    const a = qemuArgs({ ...uefi, tpm: true, run: { ...uefi.run, tpmSocket: '/tmp/x/swtpm.sock' } });
    expect(after(a, '-chardev')).toEqual(['socket,id=chrtpm,path=/tmp/x/swtpm.sock']);
    expect(after(a, '-tpmdev')).toEqual(['emulator,id=tpm0,chardev=chrtpm']);
    expect(after(a, '-device')).toContain('tpm-crb,tpmdev=tpm0');
    expect(after(qemuArgs({ ...spec, tpm: true, run: { tpmSocket: '/s' } }), '-device')).toContain('tpm-tis,tpmdev=tpm0');
    expect(() => qemuArgs({ ...uefi, tpm: true })).toThrow(/swtpm/);
  });

  it('SATA disk (AHCI on q35) and an e1000e NIC: what Windows runs without virtio-win', () => {
    const a = qemuArgs({ ...uefi, diskBus: 'sata', nicModel: 'e1000e' });
    expect(after(a, '-device')).toEqual(['ide-hd,drive=disk0,bus=ide.0,bootindex=1']);
    expect(after(a, '-nic')).toEqual(['user,model=e1000e']);
  });

  it('a desktop\'s uuid is fixed by its name (version 8, variant 10)', () => {
    expect(desktopUuid('alice')).toBe(desktopUuid('alice'));
    expect(desktopUuid('alice')).not.toBe(desktopUuid('bob'));
    expect(desktopUuid('alice')).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  it('picks OVMF from QEMU\'s firmware descriptors as libvirt does (Debian\'s three; /etc shadows by name)', () => {
    const d = (code: string, vars: string, features: string[], machines = ['pc-q35-*']): FirmwareDescriptor => ({
      'interface-types': ['uefi'], targets: [{ architecture: 'x86_64', machines }], features,
      mapping: { device: 'flash', executable: { filename: code, format: 'raw' }, 'nvram-template': { filename: vars, format: 'raw' } },
    });
    const debian = [
      { name: '60-edk2-x86_64.json', d: d('/usr/share/OVMF/OVMF_CODE_4M.fd', '/usr/share/OVMF/OVMF_VARS_4M.fd', ['acpi-s3', 'amd-sev', 'verbose-dynamic'], ['pc-i440fx-*', 'pc-q35-*']) },
      { name: '40-edk2-x86_64-secure-enrolled.json', d: d('/usr/share/OVMF/OVMF_CODE_4M.ms.fd', '/usr/share/OVMF/OVMF_VARS_4M.ms.fd', ['acpi-s3', 'amd-sev', 'enrolled-keys', 'requires-smm', 'secure-boot', 'verbose-dynamic']) },
      { name: '50-edk2-x86_64-secure.json', d: d('/usr/share/OVMF/OVMF_CODE_4M.secboot.fd', '/usr/share/OVMF/OVMF_VARS_4M.fd', ['acpi-s3', 'amd-sev', 'requires-smm', 'secure-boot', 'verbose-dynamic']) },
    ];
    expect(pickOvmf(debian, false)).toEqual({ code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd', smm: false });
    expect(pickOvmf(debian, true)).toEqual({ code: '/usr/share/OVMF/OVMF_CODE_4M.ms.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.ms.fd', smm: true });
    // An entry in /etc/qemu/firmware (listed first) with a packaged name replaces it; an empty one masks it.
    const masked = [{ name: '40-edk2-x86_64-secure-enrolled.json', d: { 'interface-types': [], mapping: { device: 'none' }, targets: [], features: [] } }, ...debian];
    expect(pickOvmf(masked, true)).toBeNull();
    expect(pickOvmf(debian.map((x) => ({ ...x, d: { ...x.d, targets: [{ architecture: 'aarch64', machines: ['virt-*'] }] } })), false)).toBeNull();
  });

  /** Every domain variant `vdi start --print-libvirt-xml` can print, checked against libvirt's own schema. */
  const variants: [string, VmSpec][] = [
    ['domain-tcg-vnc.xml', { ...spec, vnc: 1 }],
    ['domain-kvm.xml', { ...spec, accel: 'kvm', net: 'none', name: 'x<&>"\'' }],
    ['domain-tls.xml', { ...spec, tls: { kind: 'x509', dir: '/etc/pki/libvirt-nbd' } }],
    ['domain-uefi.xml', { ...uefi, run: undefined }],
    ['domain-win11.xml', { ...uefi, run: undefined, accel: 'kvm', secureBoot: true, tpm: true, diskBus: 'sata', nicModel: 'e1000e', vnc: 0 }],
    ['domain-uefi-tpm-tcg.xml', { ...uefi, run: undefined, tpm: true }],
    ['domain-bios-tpm-sata.xml', { ...spec, tpm: true, diskBus: 'sata', uuid: desktopUuid('alice') }],
  ];

  it('renders the libvirt domain (golden)', async () => {
    for (const [file, s] of variants) await expect(libvirtXml(s)).toMatchFileSnapshot(`../../test/fixtures/vdi/${file}`);
  });

  it('every variant is valid to libvirt\'s domain schema (virt-xml-validate)', () => {
    if (spawnSync('virt-xml-validate', ['--help']).error || spawnSync('xmllint', ['--version']).error) {
      throw new Error('virt-xml-validate or xmllint missing: bash scripts/setup-deps.sh (apt-get install libvirt-clients libxml2-utils)');
    }
    const dir = mkdtempSync(path.join(tmpdir(), 'df-virtxml-'));
    try {
      for (const [file, s] of variants) {
        writeFileSync(path.join(dir, file), libvirtXml(s));
        const r = spawnSync('virt-xml-validate', [path.join(dir, file), 'domain'], { encoding: 'utf8' });
        expect({ status: r.status, out: `${r.stdout}${r.stderr}`.trim() }, file).toEqual({ status: 0, out: `${path.join(dir, file)} validates` });
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('UEFI in libvirt: q35, firmware chosen by features, the desktop\'s NVRAM; Secure Boot adds SMM; TPM 2.0 kept per desktop', () => {
    const plain = libvirtXml({ ...uefi, run: undefined });
    expect(plain).toContain("<os firmware='efi'>");
    expect(plain).toContain("machine='q35'");
    expect(plain).toContain("<feature enabled='no' name='secure-boot'/>");
    expect(plain).toContain('<nvram>/var/lib/libvirt/qemu/nvram/deskfuse-alice_VARS.fd</nvram>');
    expect(plain).not.toContain('<smm');
    expect(plain).toContain("<cpu mode='maximum'/>"); // TCG: QEMU's "max", what Windows 11 24H2 needs (SSE4.2, POPCNT), never qemu64
    const w = libvirtXml(variants[4]![1]);
    expect(w).toContain("<feature enabled='yes' name='secure-boot'/>");
    expect(w).toContain("<feature enabled='yes' name='enrolled-keys'/>");
    expect(w).toContain("<smm state='on'/>");
    expect(w).toContain('deskfuse-alice-secboot_VARS.fd');
    expect(w).toContain("<tpm model='tpm-crb'>");
    expect(w).toContain("<backend type='emulator' version='2.0' persistent_state='yes'/>");
    expect(w).toContain(`<uuid>${desktopUuid('alice')}</uuid>`);
    expect(w).toContain("<cpu mode='host-passthrough'/>");
    expect(w).toContain("<target dev='sda' bus='sata'/>");
  });
});
