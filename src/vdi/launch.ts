import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { accessSync, constants as FS, readdirSync, readFileSync } from 'node:fs';
import nodePath from 'node:path';

/**
 * How a hypervisor host runs a VDI session's VM: QEMU arguments and the libvirt domain, both pure
 * functions of the session's NBD address, so they are golden-tested; and the KVM probe.
 */
export interface VmSpec {
  /** VM name (libvirt domain name; QEMU -name). */
  name: string;
  host: string;
  port: number;
  /** The export name, secret included. */
  exportName: string;
  memoryMiB: number;
  cpus: number;
  accel: 'kvm' | 'tcg';
  /** VNC display number (`:N` → N), or none: serial console on stdio. */
  vnc: number | null;
  net: 'user' | 'none';
  /**
   * NBD over TLS (the server's nbd.tls): x509 with `dir` holding ca-cert.pem (QEMU's tls-creds-x509
   * layout; a client certificate is optional), or PSK with `dir` holding keys.psk and the identity.
   * Absent or null: plain NBD.
   */
  tls?: VmTls | null;
  /**
   * The firmware: 'bios' (SeaBIOS on the i440fx `pc` machine, the default of this type: what sessions ran
   * before UEFI existed here), or 'uefi' (OVMF on q35; `vdi start`'s default). A desktop boots the same
   * way as at a UEFI VOI endpoint: the same disk, its ESP's boot loader.
   */
  firmware?: 'bios' | 'uefi';
  /** UEFI only: OVMF's secure-boot build with Microsoft's keys enrolled, SMM on (what Windows 11 expects). */
  secureBoot?: boolean;
  /** A TPM 2.0 (swtpm): CRB on UEFI, TIS on BIOS. */
  tpm?: boolean;
  /** The disk's bus: virtio-blk (fast; Windows needs the virtio-win storage driver) or SATA/AHCI (drivers in every OS). */
  diskBus?: 'virtio' | 'sata';
  /** The NIC's model: virtio-net (Windows needs virtio-win's NetKVM) or Intel e1000e (in Windows' box). */
  nicModel?: 'virtio' | 'e1000e';
  /** SMBIOS system UUID (libvirt domain uuid): one per desktop (desktopUuid), so Windows sees the same machine. */
  uuid?: string;
  /** The desktop: names the libvirt NVRAM file, kept per desktop. */
  desktop?: string;
  /** What QEMU runs with (qemuArgs only): OVMF's files for 'uefi', swtpm's control socket for `tpm`. */
  run?: { ovmf?: OvmfFiles; tpmSocket?: string };
}

/** OVMF for one VM: the read-only code, this VM's own variable store, and whether the code needs SMM. */
export interface OvmfFiles { code: string; vars: string; smm: boolean }

export type VmTls = { kind: 'x509'; dir: string } | { kind: 'psk'; dir: string; username: string };

/** nbd:// or, when the server speaks TLS, nbds:// (the scheme libnbd and `vdi start` read as "use TLS"). */
export const nbdUrl = (s: Pick<VmSpec, 'host' | 'port' | 'exportName'> & { tls?: boolean | VmTls | null }): string =>
  `${s.tls ? 'nbds' : 'nbd'}://${s.host.includes(':') ? `[${s.host}]` : s.host}:${s.port}/${s.exportName}`;

/** QEMU's own NBD client drives the disk: the VM's flushes become NBD_CMD_FLUSH, its exit NBD_CMD_DISC. */
export function qemuArgs(s: VmSpec, extra: string[] = []): string[] {
  const opt = (v: string) => v.replace(/,/g, ',,'); // QEMU option values escape commas by doubling
  const t = s.tls ?? null;
  const uefi = s.firmware === 'uefi';
  if (s.secureBoot && !uefi) throw new Error('secure boot needs UEFI firmware');
  const ovmf = s.run?.ovmf;
  if (uefi && !ovmf) throw new Error('UEFI: no OVMF files given');
  if (s.tpm && !s.run?.tpmSocket) throw new Error('TPM: no swtpm socket given');
  const smm = uefi && (ovmf!.smm || s.secureBoot === true);
  // QEMU's NBD client sends NBD_OPT_STARTTLS first and verifies the server against server.host.
  const creds = t === null ? [] : ['-object', t.kind === 'x509'
    ? `tls-creds-x509,id=nbdtls0,dir=${opt(t.dir)},endpoint=client`
    : `tls-creds-psk,id=nbdtls0,dir=${opt(t.dir)},username=${opt(t.username)},endpoint=client`];
  // q35's AHCI controller (ide.0) or the pc machine's IDE: both are on board, even with -nodefaults.
  const disk = s.diskBus === 'sata' ? 'ide-hd,drive=disk0,bus=ide.0,bootindex=1' : 'virtio-blk-pci,drive=disk0,bootindex=1';
  return [
    '-name', opt(s.name),
    '-accel', s.accel, '-cpu', s.accel === 'kvm' ? 'host' : 'max',
    '-machine', uefi ? (smm ? 'q35,smm=on' : 'q35') : 'pc',
    ...(s.uuid ? ['-uuid', s.uuid] : []),
    '-m', String(s.memoryMiB), '-smp', String(s.cpus),
    '-nodefaults', '-no-user-config',
    // The secure-boot build keeps its variables behind SMM: flash writes only from SMM, no S3 resume around it.
    ...(smm ? ['-global', 'driver=cfi.pflash01,property=secure,value=on', '-global', 'ICH9-LPC.disable_s3=1'] : []),
    ...(uefi ? [
      '-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${opt(ovmf!.code)}`,
      '-drive', `if=pflash,format=raw,unit=1,file=${opt(ovmf!.vars)}`,
    ] : []),
    ...(s.tpm ? [
      '-chardev', `socket,id=chrtpm,path=${opt(s.run!.tpmSocket!)}`,
      '-tpmdev', 'emulator,id=tpm0,chardev=chrtpm',
      '-device', `${uefi ? 'tpm-crb' : 'tpm-tis'},tpmdev=tpm0`,
    ] : []),
    ...creds,
    '-blockdev', `driver=nbd,node-name=disk0,server.type=inet,server.host=${opt(s.host)},server.port=${s.port},export=${opt(s.exportName)}${t ? ',tls-creds=nbdtls0' : ''}`,
    '-device', disk,
    ...(s.net === 'user' ? ['-nic', `user,model=${s.nicModel === 'e1000e' ? 'e1000e' : 'virtio-net-pci'}`] : []),
    ...(s.vnc === null ? ['-display', 'none', '-serial', 'stdio', '-monitor', 'none'] : ['-vga', 'std', '-vnc', `127.0.0.1:${s.vnc}`, '-serial', 'none', '-monitor', 'none']),
    ...extra,
  ];
}

/**
 * The SMBIOS UUID of a desktop's VMs: a name-based UUID (RFC 9562 version 8, from SHA-256) so every
 * session of one desktop is the same machine to its OS (Windows activation, libvirt's per-domain TPM state).
 */
export function desktopUuid(desktop: string): string {
  const h = createHash('sha256').update(`deskfuse desktop ${desktop}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x80;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

/** One QEMU firmware descriptor (docs/interop/firmware.json), the fields we read. */
export interface FirmwareDescriptor {
  'interface-types': string[];
  mapping: { device: string; executable?: { filename: string; format?: string }; 'nvram-template'?: { filename: string; format?: string } };
  targets: { architecture: string; machines: string[] }[];
  features: string[];
}

/** Debian's ovmf, where no descriptor says otherwise. */
export const OVMF_DEBIAN = {
  plain: { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd', smm: false },
  secure: { code: '/usr/share/OVMF/OVMF_CODE_4M.ms.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.ms.fd', smm: true },
} as const;

/**
 * OVMF for a q35 VM, chosen as libvirt chooses it: from QEMU's firmware descriptors, in file name order
 * (a name in /etc/qemu/firmware shadows the same name in /usr/share/qemu/firmware): a flash UEFI build for
 * x86_64 q35; with Secure Boot one with `secure-boot` and `enrolled-keys` (Microsoft's keys: Windows'
 * boot manager is signed by them), without it one with neither. `vars` is the template.
 */
export function pickOvmf(descriptors: { name: string; d: FirmwareDescriptor }[], secureBoot: boolean): OvmfFiles | null {
  const glob = (g: string) => new RegExp(`^${g.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
  const byName = new Map<string, FirmwareDescriptor>();
  for (const { name, d } of descriptors) if (!byName.has(name)) byName.set(name, d);
  for (const name of [...byName.keys()].sort()) {
    const d = byName.get(name)!;
    const f = new Set(d.features ?? []);
    if (!d['interface-types']?.includes('uefi') || d.mapping?.device !== 'flash') continue;
    if (!d.targets?.some((t) => t.architecture === 'x86_64' && t.machines.some((m) => glob(m).test('pc-q35-7.2')))) continue;
    if (secureBoot ? !(f.has('secure-boot') && f.has('enrolled-keys')) : f.has('secure-boot') || f.has('enrolled-keys')) continue;
    if (f.has('amd-sev-es') || f.has('intel-tdx')) continue;
    const code = d.mapping.executable?.filename;
    const vars = d.mapping['nvram-template']?.filename;
    if (!code || !vars || (d.mapping.executable?.format ?? 'raw') !== 'raw') continue;
    return { code, vars, smm: f.has('requires-smm') };
  }
  return null;
}

/** OVMF on this host: its descriptors, else Debian's paths; null when the files are not there. */
export function findOvmf(secureBoot: boolean, dirs = ['/etc/qemu/firmware', '/usr/share/qemu/firmware']): OvmfFiles | null {
  const found: { name: string; d: FirmwareDescriptor }[] = [];
  for (const dir of dirs) {
    let names: string[];
    try {
      names = readdirSync(dir).filter((n) => n.endsWith('.json'));
    } catch {
      continue;
    }
    for (const name of names) {
      try {
        found.push({ name, d: JSON.parse(readFileSync(nodePath.join(dir, name), 'utf8')) as FirmwareDescriptor });
      } catch {
        /* an empty file masks a packaged descriptor; an unreadable one is skipped, as QEMU's tools do */
        found.push({ name, d: { 'interface-types': [], mapping: { device: 'none' }, targets: [], features: [] } });
      }
    }
  }
  const readable = (o: OvmfFiles | null) => {
    if (!o) return null;
    try {
      accessSync(o.code, FS.R_OK);
      accessSync(o.vars, FS.R_OK);
      return o;
    } catch {
      return null;
    }
  };
  return readable(pickOvmf(found, secureBoot)) ?? readable({ ...(secureBoot ? OVMF_DEBIAN.secure : OVMF_DEBIAN.plain) });
}

const esc = (v: string) => v.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');

/** libvirt's NVRAM file of a desktop (its own per Secure Boot mode: the two templates differ). */
export const libvirtNvram = (desktop: string, secureBoot: boolean) => `/var/lib/libvirt/qemu/nvram/deskfuse-${desktop}${secureBoot ? '-secboot' : ''}_VARS.fd`;

/**
 * A libvirt domain for pools managed by libvirt: the same disk as a network disk of protocol nbd.
 * With TLS, `tls='yes'` on the source: libvirt then takes the client credentials from qemu.conf's
 * nbd_tls_x509_cert_dir (ca-cert.pem there); libvirt has no PSK for NBD disks.
 * UEFI: libvirt picks OVMF from QEMU's firmware descriptors by the features asked (secure-boot and
 * enrolled-keys, or neither) and makes the desktop's NVRAM from that build's template the first time; TPM:
 * libvirt runs swtpm, its state kept across the transient domains by the desktop's stable uuid.
 */
export function libvirtXml(s: VmSpec): string {
  const uefi = s.firmware === 'uefi';
  const sb = uefi && s.secureBoot === true;
  const yn = (b: boolean) => (b ? 'yes' : 'no');
  const os = uefi
    ? `  <os firmware='efi'>
    <type arch='x86_64' machine='q35'>hvm</type>
    <firmware>
      <feature enabled='${yn(sb)}' name='enrolled-keys'/>
      <feature enabled='${yn(sb)}' name='secure-boot'/>
    </firmware>
${sb ? "    <loader secure='yes'/>\n" : ''}${s.desktop ? `    <nvram>${esc(libvirtNvram(s.desktop, sb))}</nvram>\n` : ''}  </os>`
    : `  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>`;
  const sata = s.diskBus === 'sata';
  return `<domain type='${s.accel === 'kvm' ? 'kvm' : 'qemu'}'>
  <name>${esc(s.name)}</name>
${s.uuid ? `  <uuid>${esc(s.uuid)}</uuid>\n` : ''}  <memory unit='MiB'>${s.memoryMiB}</memory>
  <vcpu>${s.cpus}</vcpu>
${os}
  <features><acpi/><apic/>${sb ? "<smm state='on'/>" : ''}</features>
  ${s.accel === 'kvm' ? "<cpu mode='host-passthrough'/>" : "<cpu mode='maximum'/>"}
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
${uefi ? "  <pm><suspend-to-mem enabled='no'/><suspend-to-disk enabled='no'/></pm>\n" : ''}  <devices>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source protocol='nbd' name='${esc(s.exportName)}'${s.tls ? " tls='yes'" : ''}>
        <host name='${esc(s.host)}' port='${s.port}'/>
      </source>
      <target dev='${sata ? 'sda' : 'vda'}' bus='${sata ? 'sata' : 'virtio'}'/>
      <boot order='1'/>
    </disk>
${s.net === 'user' ? `    <interface type='user'><model type='${s.nicModel === 'e1000e' ? 'e1000e' : 'virtio'}'/></interface>\n` : ''}    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
${s.tpm ? `    <tpm model='${uefi ? 'tpm-crb' : 'tpm-tis'}'>\n      <backend type='emulator' version='2.0' persistent_state='yes'/>\n    </tpm>\n` : ''}${s.vnc === null ? '' : `    <graphics type='vnc' port='${5900 + s.vnc}' listen='127.0.0.1'/>\n    <video><model type='vga'/></video>\n`}  </devices>
</domain>
`;
}

/**
 * KVM when it works: /dev/kvm must be usable and QEMU must start a `-cpu host` machine with it (some
 * nested hosts expose /dev/kvm that QEMU cannot use: "failed to set MSR"). Otherwise TCG.
 */
export async function kvmWorks(timeoutMs = 1500): Promise<boolean> {
  try {
    accessSync('/dev/kvm', FS.R_OK | FS.W_OK);
  } catch {
    return false;
  }
  return new Promise((resolve) => {
    const q = spawn('qemu-system-x86_64', ['-accel', 'kvm', '-cpu', 'host', '-machine', 'pc', '-nodefaults', '-no-user-config', '-display', 'none', '-S', '-monitor', 'none', '-serial', 'none'], { stdio: 'ignore' });
    const timer = setTimeout(() => { q.kill('SIGKILL'); resolve(true); }, timeoutMs);
    q.once('error', () => { clearTimeout(timer); resolve(false); });
    q.once('exit', () => { clearTimeout(timer); resolve(false); });
  });
}
