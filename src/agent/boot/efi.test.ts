import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { thrown } from '../../../test/helpers/expect.js';
import { bootNextValue, findDiskOption, parseLoadOption, pciChain, pciChainOfSysfs } from './efi.js';

// Real boot options, captured from OVMF's variable store after an e2e run (see the fixture's "source").
const fixture = JSON.parse(readFileSync(path.join(import.meta.dirname, '../../../test/fixtures/efi/ovmf-boot-options.json'), 'utf8')) as { options: Record<string, string> };
const options = Object.entries(fixture.options).map(([name, hex]) => ({ num: parseInt(name.slice(4), 16), option: parseLoadOption(Buffer.from(hex, 'hex')) }));

describe('UEFI boot options (golden, from OVMF)', () => {
  it('decodes every option: descriptions and device paths', () => {
    expect(options.map((o) => o.option.description)).toEqual([
      'UiApp', 'UEFI Misc Device', 'UEFI PXEv4 (MAC:52540091000C)', 'UEFI PXEv4 (MAC:52540091000C) 2',
      'UEFI PXEv6 (MAC:52540091000C)', 'UEFI HTTPv4 (MAC:52540091000C)', 'UEFI HTTPv6 (MAC:52540091000C)', 'EFI Internal Shell',
    ]);
    const disk = options.find((o) => o.num === 1)!.option;
    expect(disk.path.map((n) => [n.type, n.subType])).toEqual([[2, 1], [1, 1]]); // PciRoot(0x0)/Pci(0x1,0x0)
    expect(pciChain(disk.path)).toEqual(['1.0']);
    expect(pciChain(options.find((o) => o.num === 2)!.option.path)).toEqual(['2.0']);
  });

  it('finds the disk option for the disk sysfs names, not a network option or a firmware app', () => {
    const pci = pciChainOfSysfs('/sys/devices/pci0000:00/0000:00:01.0/virtio0/block/vda');
    expect(pci).toEqual(['1.0']);
    expect(findDiskOption(options, pci)?.num).toBe(1);
    // The NIC's PCI path has only network options: nothing to boot there.
    expect(findDiskOption(options, ['2.0'])).toBeUndefined();
    // Behind a bridge: 00:1c.0 → 01:00.0
    expect(pciChainOfSysfs('/sys/devices/pci0000:00/0000:00:1c.0/0000:01:00.0/nvme/nvme0/nvme0n1')).toEqual(['28.0', '0.0']);
  });

  it('BootNext as efivarfs wants it: attributes NV|BS|RT, then the option number', () => {
    expect(bootNextValue(1).toString('hex')).toBe('070000000100');
    expect(bootNextValue(0x1234).toString('hex')).toBe('070000003412');
  });

  it('refuses truncated and malformed options with coded errors', () => {
    const disk = Buffer.from(fixture.options.Boot0001!, 'hex');
    for (let n = 0; n < disk.length - 4; n++) {
      try {
        parseLoadOption(disk.subarray(0, n));
      } catch (err) {
        expect((err as { code: string }).code).toBe('DF_ERR_DECODE');
      }
    }
    const bad = Buffer.from(disk);
    bad.writeUInt16LE(0xffff, 4); // device path length beyond the option
    expect(thrown(() => parseLoadOption(bad)).code).toBe('DF_ERR_DECODE');
  });
});
