import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DeskfuseError } from '../errors.js';
import { mutations, prng, thrown } from '../../test/helpers/expect.js';
import { BOOTREPLY, decodeDhcp, encodeDhcp, enc, FLAG_BROADCAST, macOf, MSG, OPT, type DecodedDhcp, type DhcpMessage } from './packet.js';

const FIXTURES = path.resolve(import.meta.dirname, '../../test/fixtures/dhcp');
const CAPTURES = ['udhcpc-discover', 'dhclient-discover', 'ipxe-bios-discover', 'ovmf-pxe-discover'];
const capture = (name: string): Buffer => Buffer.from(readFileSync(path.join(FIXTURES, `${name}.hex`), 'utf8').trim(), 'hex');

/** A JSON view of a decoded message: buffers as hex, maps as objects. */
function view(p: DecodedDhcp): unknown {
  const hexMap = (m?: Map<number, Buffer>) => m && Object.fromEntries([...m].map(([k, v]) => [k, v.toString('hex')]));
  return {
    ...p,
    chaddr: p.chaddr.toString('hex'),
    mac: macOf(p),
    options: hexMap(p.options),
    opts: { ...p.opts, clientId: p.opts.clientId?.toString('hex'), pxe: hexMap(p.opts.pxe), ipxe: hexMap(p.opts.ipxe) },
  };
}

const strip = (p: DecodedDhcp): DhcpMessage => {
  const { opts: _opts, ...m } = p;
  return m;
};

describe('DHCP codec on real captures', () => {
  it.each(CAPTURES)('%s decodes to its golden JSON', async (name) => {
    await expect(JSON.stringify(view(decodeDhcp(capture(name))), null, 2) + '\n').toMatchFileSnapshot(path.join(FIXTURES, `${name}.json`));
  });

  it.each(CAPTURES)('%s: decode → encode → decode is the same message', (name) => {
    const first = decodeDhcp(capture(name));
    expect(decodeDhcp(encodeDhcp(first))).toEqual(first);
  });

  it('reads what a PXE ROM and iPXE say about themselves', () => {
    const ipxe = decodeDhcp(capture('ipxe-bios-discover')).opts;
    expect(ipxe.vendorClass).toMatch(/^PXEClient:Arch:00000/);
    expect(ipxe.clientArch).toEqual([0]);
    expect(ipxe.userClass).toEqual(['iPXE']);
    expect(ipxe.uuid).toBe('6a1e5c0e-8d2b-4f3a-9c77-0123456789ab');
    expect(ipxe.ipxe?.size).toBeGreaterThan(0);
    const ovmf = decodeDhcp(capture('ovmf-pxe-discover')).opts;
    expect(ovmf.clientArch).toEqual([7]);
    expect(ovmf.userClass).toBeUndefined();
  });
});

describe('DHCP options', () => {
  const base: DhcpMessage = {
    op: BOOTREPLY, htype: 1, hlen: 6, hops: 0, xid: 0x01020304, secs: 0, flags: FLAG_BROADCAST,
    ciaddr: '0.0.0.0', yiaddr: '10.0.0.5', siaddr: '10.0.0.1', giaddr: '0.0.0.0', chaddr: Buffer.from('525400123456', 'hex'),
    sname: 'srv', file: 'undionly.kpxe', options: new Map(),
  };

  it('splits data longer than 255 bytes and concatenates it back (RFC 3396)', () => {
    const long = Buffer.alloc(600, 7);
    const bytes = encodeDhcp({ ...base, options: new Map([[OPT.MESSAGE_TYPE, enc.u8(MSG.OFFER)], [OPT.BOOTFILE, long]]) });
    expect(bytes.length).toBeGreaterThan(240 + 600);
    expect(decodeDhcp(bytes).options.get(OPT.BOOTFILE)).toEqual(long);
  });

  it('pads short replies to the 300-byte BOOTP minimum', () => {
    expect(encodeDhcp(base).length).toBe(300);
  });

  it('reads options from file and sname when option 52 overloads them (RFC 2132 §9.3)', () => {
    const b = encodeDhcp({ ...base, file: '', sname: '', options: new Map([[OPT.MESSAGE_TYPE, enc.u8(MSG.ACK)]]) });
    // Rewrite: 52=3 in the options area, 67 in file, 66 in sname.
    const opts = Buffer.from([OPT.MESSAGE_TYPE, 1, MSG.ACK, OPT.OVERLOAD, 1, 3, OPT.END]);
    opts.copy(b, 240);
    Buffer.from([OPT.BOOTFILE, 4, ...Buffer.from('a.ef'), OPT.END]).copy(b, 108);
    Buffer.from([OPT.TFTP_SERVER, 2, ...Buffer.from('ts'), OPT.BOOTFILE, 1, ...Buffer.from('i'), OPT.END]).copy(b, 44);
    const p = decodeDhcp(b);
    expect(p.options.has(OPT.OVERLOAD)).toBe(false);
    expect(p.opts.bootfile).toBe('a.efi'); // file first, then sname (RFC 3396 §6)
    expect(p.opts.tftpServer).toBe('ts');
    expect(p.file).toBe('');
    expect(decodeDhcp(encodeDhcp(p))).toEqual(p);
  });

  it('decodes user class in RFC 3004 form and as a plain string', () => {
    const m = (v: Buffer) => decodeDhcp(encodeDhcp({ ...base, options: new Map([[OPT.USER_CLASS, v]]) })).opts.userClass;
    expect(m(Buffer.from('iPXE'))).toEqual(['iPXE']);
    expect(m(Buffer.from([4, ...Buffer.from('iPXE'), 2, ...Buffer.from('ab')]))).toEqual(['iPXE', 'ab']);
  });

  it('decodes several client architectures, PXE sub-options and server fields', () => {
    const opts = new Map([
      [OPT.VENDOR_CLASS, enc.str('PXEClient')], [OPT.CLIENT_ARCH, Buffer.from([0, 7, 0, 9])],
      [OPT.VENDOR, enc.sub(new Map([[6, enc.u8(8)]]))], [OPT.SERVER_ID, enc.ip('10.0.0.1')], [OPT.LEASE_TIME, enc.u32(3600)],
      [OPT.ROUTER, enc.ips(['10.0.0.1', '10.0.0.2'])], [OPT.IPXE, enc.sub(new Map([[176, enc.u8(1)]]))],
    ]);
    const o = decodeDhcp(encodeDhcp({ ...base, options: opts })).opts;
    expect(o.clientArch).toEqual([7, 9]);
    expect(o.pxe?.get(6)).toEqual(Buffer.from([8]));
    expect(o.ipxe?.get(176)).toEqual(Buffer.from([1]));
    expect(o).toMatchObject({ serverId: '10.0.0.1', leaseTime: 3600, routers: ['10.0.0.1', '10.0.0.2'] });
  });

  it('names option and offset when a length is wrong', () => {
    const b = encodeDhcp({ ...base, options: new Map([[OPT.MESSAGE_TYPE, enc.u8(1)], [OPT.CLIENT_ARCH, Buffer.from([0, 0, 7])]]) });
    const err = thrown(() => decodeDhcp(b));
    expect(err.code).toBe('DF_ERR_DECODE');
    expect(err.message).toBe('dhcp: option 93 length 3 at offset 243, expected a multiple of 2, at least 2');
    expect(err.fields).toMatchObject({ field: 'option 93', offset: 243 });
  });

  it('refuses to encode what does not fit, before writing', () => {
    expect(thrown(() => encodeDhcp({ ...base, file: 'x'.repeat(128) })).fields).toEqual({ field: 'file' });
    expect(thrown(() => encodeDhcp({ ...base, siaddr: '10.0.0.256' })).fields).toEqual({ field: 'siaddr' });
    expect(thrown(() => encodeDhcp({ ...base, options: new Map([[OPT.END, Buffer.alloc(1)]]) })).code).toBe('DF_ERR_BAD_REQUEST');
  });
});

describe('DHCP decoder fuzzing', () => {
  const decodeOrCodedError = (b: Buffer) => {
    try {
      decodeDhcp(b);
    } catch (err) {
      expect(err).toBeInstanceOf(DeskfuseError);
      expect((err as DeskfuseError).code).toBe('DF_ERR_DECODE');
    }
  };

  it('throws only DF_ERR_DECODE on truncated and bit-flipped captures', () => {
    const rnd = prng(4578);
    for (const m of mutations(CAPTURES.map(capture), () => Math.floor(rnd() * 256))) decodeOrCodedError(m);
  });

  it('throws only DF_ERR_DECODE on random bytes after a valid header', () => {
    const rnd = prng(2131);
    const head = capture('ipxe-bios-discover').subarray(0, 240);
    for (let i = 0; i < 3000; i++) {
      const tail = Buffer.from(Array.from({ length: Math.floor(rnd() * 400) }, () => Math.floor(rnd() * 256)));
      decodeOrCodedError(Buffer.concat([head, tail]));
      decodeOrCodedError(tail);
    }
  });
});
