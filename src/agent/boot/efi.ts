import { dfError } from '../../errors.js';

/**
 * UEFI boot options, enough to send the next boot to the local disk once (BootNext) while the
 * firmware's BootOrder stays network-first. UEFI 2.10 §3.1.3 (EFI_LOAD_OPTION), §3.3 (BootNext),
 * §10.3 (device path nodes). efivarfs files start with the variable's 4-byte attributes.
 *
 * EFI_LOAD_OPTION:  u32 Attributes | u16 FilePathListLength | CHAR16 Description[] (NUL-terminated)
 *                   | device path (FilePathListLength bytes) | optional data
 * device path node: u8 Type | u8 SubType | u16 Length (incl. header) | data;  Type 0x7f = end
 */
export const EFI_GLOBAL = '8be4df61-93ca-11d2-aa0d-00e098032b8c';
/** NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS */
export const EFI_VAR_NV_BS_RT = 0x7;

export interface DevicePathNode {
  type: number;
  subType: number;
  data: Buffer;
}

export interface LoadOption {
  attributes: number;
  description: string;
  path: DevicePathNode[];
}

export function parseLoadOption(b: Buffer): LoadOption {
  if (b.length < 8) throw dfError('DF_ERR_DECODE', `EFI load option: ${b.length} bytes, need at least 8`);
  const attributes = b.readUInt32LE(0);
  const fpLen = b.readUInt16LE(4);
  let p = 6;
  while (p + 1 < b.length && b.readUInt16LE(p) !== 0) p += 2;
  if (p + 1 >= b.length) throw dfError('DF_ERR_DECODE', 'EFI load option: description not terminated');
  const description = b.subarray(6, p).toString('utf16le');
  p += 2;
  const end = p + fpLen;
  if (end > b.length) throw dfError('DF_ERR_DECODE', `EFI load option: device path of ${fpLen} bytes at offset ${p} overruns ${b.length}`);
  const path: DevicePathNode[] = [];
  while (p + 4 <= end) {
    const type = b[p]!, subType = b[p + 1]!, len = b.readUInt16LE(p + 2);
    if (len < 4 || p + len > end) throw dfError('DF_ERR_DECODE', `EFI device path node of length ${len} at offset ${p}`);
    if (type === 0x7f) break;
    path.push({ type, subType, data: b.subarray(p + 4, p + len) });
    p += len;
  }
  return { attributes, description, path };
}

/** The PCI nodes of a device path as "dev.fn" strings (Hardware/PCI: type 1, subtype 1, data = function, device). */
export function pciChain(path: DevicePathNode[]): string[] {
  return path.filter((n) => n.type === 1 && n.subType === 1 && n.data.length >= 2).map((n) => `${n.data[1]}.${n.data[0]}`);
}

/** PCI "dev.fn" chain of a block device from its sysfs path (…/0000:00:1c.0/0000:01:00.0/…/block/vda). */
export function pciChainOfSysfs(realPath: string): string[] {
  return [...realPath.matchAll(/\/[0-9a-f]{4}:[0-9a-f]{2}:([0-9a-f]{2})\.([0-7])(?=\/)/g)].map((m) => `${parseInt(m[1]!, 16)}.${parseInt(m[2]!, 16)}`);
}

/**
 * The boot option that boots the disk at this PCI chain: same PCI path, not a network option
 * (Messaging MAC/IPv4/IPv6/URI nodes) and not a firmware application (media FV/FV file: setup, shell).
 */
export function findDiskOption(options: ReadonlyArray<{ num: number; option: LoadOption }>, diskPci: string[]): { num: number; option: LoadOption } | undefined {
  const want = diskPci.join('/');
  return options.find(({ option }) => {
    const net = option.path.some((n) => n.type === 3 && [11, 12, 13, 24].includes(n.subType));
    const fw = option.path.some((n) => n.type === 4 && (n.subType === 6 || n.subType === 7));
    return !net && !fw && (option.attributes & 1) === 1 && pciChain(option.path).join('/') === want;
  });
}

/** efivarfs content of BootNext = option `num`. */
export function bootNextValue(num: number): Buffer {
  const v = Buffer.alloc(6);
  v.writeUInt32LE(EFI_VAR_NV_BS_RT, 0);
  v.writeUInt16LE(num, 4);
  return v;
}
