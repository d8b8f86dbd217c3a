import { macOf, type DecodedDhcp } from './packet.js';

/** What a DHCP request says about the machine that sent it (pure: classify). */
export interface Client {
  mac: string;
  /** The first architecture of option 93 (RFC 4578 §2.1), or undefined when absent. */
  arch: number | undefined;
  /** Every architecture option 93 lists, in the client's order. */
  arches: number[];
  /** Option 60 starts with PXEClient (PXE spec §2.2): a PXE ROM or iPXE. */
  isPxe: boolean;
  /** Option 60 starts with HTTPClient (UEFI spec §24.7 HTTP boot). */
  isHttpBoot: boolean;
  /** User class (option 77) says iPXE: already iPXE, so give it the script, not another iPXE. */
  isIpxe: boolean;
  userClass: string[];
  uuid: string | undefined;
  vendorClass: string | undefined;
  hostname: string | undefined;
}

export interface BootSpec {
  /** A TFTP file name, or an http(s) URL. */
  file: string;
  /** The TFTP server's IPv4 address; default: the DHCP server's own. */
  tftpServer?: string;
  /** Add option 175.176 = 1 so iPXE does not wait for ProxyDHCP offers. */
  ipxeNoPxeDhcp?: boolean;
}

/** Where answers come from: null means "do not answer this client". */
export interface Booter {
  bootSpec(c: Client): BootSpec | null;
}

export function classify(p: DecodedDhcp): Client {
  const o = p.opts;
  const arches = o.clientArch ?? [];
  const userClass = o.userClass ?? [];
  return {
    mac: macOf(p),
    arch: arches[0],
    arches,
    isPxe: o.vendorClass?.startsWith('PXEClient') ?? false,
    isHttpBoot: o.vendorClass?.startsWith('HTTPClient') ?? false,
    isIpxe: userClass.includes('iPXE'),
    userClass,
    uuid: o.uuid,
    vendorClass: o.vendorClass,
    hostname: o.hostname,
  };
}

/**
 * Client architecture (RFC 4578 §2.1, IANA "Processor Architecture Types") → iPXE binaries to
 * chainload by TFTP, in order of preference; the first one the server has is sent.
 * snponly.efi drives the NIC through the firmware's SNP (works with any NIC UEFI can drive);
 * ipxe.efi carries its own drivers (the configurable alternative).
 */
export const ARCH_TO_BOOTFILE: Readonly<Record<number, readonly string[]>> = {
  0: ['undionly.kpxe'], // x86 BIOS
  6: ['ipxe-ia32.efi'], // EFI IA32
  7: ['snponly.efi', 'ipxe.efi'], // EFI BC (x64 in practice)
  9: ['snponly.efi', 'ipxe.efi'], // EFI x86-64
  10: ['snponly-arm32.efi', 'ipxe-arm32.efi'], // ARM 32-bit UEFI
  11: ['snponly-arm64.efi', 'ipxe-arm64.efi'], // ARM 64-bit UEFI
};

/** UEFI HTTP boot architectures (IANA: 16 = x64 UEFI HTTP): they get an http URL of an EFI binary. */
export const HTTP_BOOT_ARCHES: ReadonlySet<number> = new Set([16]);

export interface TableBooterOptions {
  /** The iPXE script URL for clients that are already iPXE (`${publicUrl}/boot/ipxe`). */
  scriptUrl: string;
  /** The TFTP file names the server actually has. */
  available: ReadonlySet<string>;
  /** For x64 UEFI: prefer `ipxe.efi` (own drivers) over `snponly.efi`. */
  preferIpxeEfi?: boolean;
  /** For UEFI HTTP boot clients: the URL of an x64 iPXE EFI binary; without it they get no answer. */
  httpBootUrl?: string;
  tftpServer?: string;
  /**
   * UEFI Secure Boot: the TFTP name of shim for x64 UEFI PXE clients (SECURE_BOOT_ARCHES) instead of
   * iPXE, which such firmware refuses (unsigned). shim then loads grubx64.efi from the same directory.
   */
  secureBootFile?: string;
}

/** Client architectures that get the Secure Boot chain when it is configured (RFC 4578 §2.1: 7 EFI BC, 9 EFI x86-64). */
export const SECURE_BOOT_ARCHES: ReadonlySet<number> = new Set([7, 9]);

/** The default Booter: iPXE → script URL; PXE ROMs → the table's first available binary. */
export function tableBooter(opts: TableBooterOptions): Booter {
  const tftp = opts.tftpServer === undefined ? {} : { tftpServer: opts.tftpServer };
  return {
    bootSpec(c) {
      if (c.isIpxe) return { file: opts.scriptUrl, ipxeNoPxeDhcp: true, ...tftp };
      for (const arch of c.arches.length ? c.arches : [0]) {
        if (HTTP_BOOT_ARCHES.has(arch)) {
          if (opts.httpBootUrl) return { file: opts.httpBootUrl };
          continue;
        }
        if (opts.secureBootFile && SECURE_BOOT_ARCHES.has(arch)) return { file: opts.secureBootFile, ...tftp };
        let files = ARCH_TO_BOOTFILE[arch] ?? [];
        if (opts.preferIpxeEfi) files = [...files].sort((a, b) => Number(b.startsWith('ipxe')) - Number(a.startsWith('ipxe')));
        const file = files.find((f) => opts.available.has(f));
        if (file) return { file, ...tftp };
      }
      return null;
    },
  };
}
