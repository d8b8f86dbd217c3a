import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { isDeskfuseError } from '../errors.js';
import { mutations, prng, thrown } from '../../test/helpers/expect.js';
import { decode, encode, encodeError, requestOptions, writeDataHeader, type Packet } from './packet.js';

const FIXTURES = path.resolve(import.meta.dirname, '../../test/fixtures/tftp');
const captures = readdirSync(FIXTURES).filter((f) => f.endsWith('.bin')).map((f) => f.slice(0, -4)).sort();

describe('real client requests (captured on loopback, see each .json for the command)', () => {
  it('has captures of tftp-hpa, atftp and curl', () => {
    expect(captures.length).toBeGreaterThanOrEqual(8);
    for (const c of ['tftp-hpa', 'atftp', 'curl']) expect(captures.some((n) => n.startsWith(c))).toBe(true);
  });

  it.each(captures)('%s decodes to the golden value and re-encodes to the same bytes', async (name) => {
    const bytes = readFileSync(path.join(FIXTURES, `${name}.bin`));
    const p = decode(bytes);
    const understood = 'options' in p ? requestOptions(p.options) : null;
    const golden = JSON.parse(readFileSync(path.join(FIXTURES, `${name}.json`), 'utf8'));
    expect({ packet: p, understood }).toEqual({ packet: golden.packet, understood: golden.understood });
    expect(encode(p).equals(bytes)).toBe(true);
  });

  it('ignores atftp 0.8 `tsize enable` instead of refusing the request', () => {
    const p = decode(readFileSync(path.join(FIXTURES, 'atftp-tsize-enable.bin')));
    expect(p.op).toBe('rrq');
    if (p.op === 'rrq') expect(requestOptions(p.options)).toEqual({});
  });
});

const samples: Packet[] = [
  { op: 'rrq', filename: 'pxelinux.cfg/default', mode: 'netascii', options: [] },
  { op: 'wrq', filename: 'x', mode: 'octet', options: [['blksize', '1432'], ['tsize', '0']] },
  { op: 'data', block: 65535, data: Buffer.from('hello') },
  { op: 'data', block: 0, data: Buffer.alloc(0) },
  { op: 'ack', block: 1 },
  { op: 'error', code: 8, message: 'tsize probe' },
  { op: 'oack', options: [['blksize', '1468'], ['windowsize', '4']] },
];

describe('codec', () => {
  it.each(samples.map((s) => [s.op, s] as const))('%s round-trips', (_op, s) => {
    const bytes = encode(s);
    expect(decode(bytes)).toEqual(s);
    expect(encode(decode(bytes)).equals(bytes)).toBe(true);
  });

  it('lower-cases option names and modes (RFC 2347 §2, RFC 1350 §5)', () => {
    const p = decode(Buffer.from('\x00\x01f\x00OCTET\x00BlkSize\x001024\x00', 'latin1'));
    expect(p).toEqual({ op: 'rrq', filename: 'f', mode: 'octet', options: [['blksize', '1024']] });
  });

  it('tolerates trailing NUL padding after the options and a missing NUL after an error message', () => {
    expect(decode(Buffer.from('\x00\x01f\x00octet\x00\x00\x00', 'latin1'))).toMatchObject({ options: [] });
    expect(decode(Buffer.from('\x00\x05\x00\x01gone', 'latin1'))).toEqual({ op: 'error', code: 1, message: 'gone' });
  });

  it.each([
    ['\x00', 'opcode', 0],
    ['\x00\x09', 'opcode', 0],
    ['\x00\x01pxelinux.0', 'filename', 2],
    ['\x00\x01f\x00oct', 'mode', 4],
    ['\x00\x01f\x00octet\x00blksize', 'option name', 10],
    ['\x00\x01f\x00octet\x00blksize\x00512', 'option blksize value', 18],
    ['\x00\x04\x00', 'block', 2],
    ['\x00\x04\x00\x01\x00', 'end', 4],
  ])('%j is DF_ERR_DECODE naming %s at offset %i', (raw, field, offset) => {
    const err = thrown(() => decode(Buffer.from(raw, 'latin1')));
    expect(err.code).toBe('DF_ERR_DECODE');
    expect(err.fields).toMatchObject({ field, offset });
    expect(err.message).toContain(`offset ${offset}`);
  });

  it('encode refuses what the wire cannot carry', () => {
    expect(thrown(() => encode({ op: 'ack', block: 65536 })).code).toBe('DF_ERR_BAD_REQUEST');
    expect(thrown(() => encode({ op: 'rrq', filename: 'a\0b', mode: 'octet', options: [] })).fields).toEqual({ field: 'filename' });
    expect(thrown(() => encode({ op: 'data', block: 1, data: Buffer.alloc(65465) })).fields).toEqual({ field: 'data' });
    expect(thrown(() => encodeError(70000, 'x')).code).toBe('DF_ERR_BAD_REQUEST');
  });

  it('writeDataHeader wraps block numbers past 65535 to 0 (rollover)', () => {
    const b = Buffer.alloc(4);
    writeDataHeader(b, 0, 65536);
    expect(decode(b)).toEqual({ op: 'data', block: 0, data: Buffer.alloc(0) });
  });
});

describe('requestOptions', () => {
  it('keeps valid values of known options (RFC 2348, 2349, 7440)', () => {
    expect(requestOptions([['blksize', '1468'], ['tsize', '0'], ['timeout', '6'], ['windowsize', '16'], ['multicast', '']]))
      .toEqual({ blksize: 1468, tsize: 0, timeout: 6, windowsize: 16 });
  });

  it.each([
    ['blksize', '7'], ['blksize', '65465'], ['timeout', '0'], ['timeout', '256'], ['windowsize', '0'],
    ['windowsize', '65536'], ['tsize', 'enable'], ['blksize', '-1'], ['blksize', '1e3'], ['blksize', ''],
  ])('ignores %s=%j', (name, value) => {
    expect(requestOptions([[name, value]])).toEqual({});
  });

  it('the first of repeated options wins', () => {
    expect(requestOptions([['blksize', '1024'], ['blksize', '2048']])).toEqual({ blksize: 1024 });
  });
});

describe('fuzz', () => {
  it('random, truncated and bit-flipped datagrams only ever throw DF_ERR_DECODE', () => {
    const rnd = prng(69);
    const byte = () => Math.floor(rnd() * 256);
    const valid = [...captures.map((n) => readFileSync(path.join(FIXTURES, `${n}.bin`))), ...samples.map(encode)];
    const inputs = mutations(valid, byte);
    for (let i = 0; i < 3000; i++) {
      const len = Math.floor(rnd() * 64);
      const b = Buffer.alloc(len, 0).map(() => byte());
      if (len >= 2 && rnd() < 0.7) { b[0] = 0; b[1] = 1 + Math.floor(rnd() * 6); }
      inputs.push(Buffer.from(b));
    }
    let decoded = 0;
    for (const input of inputs) {
      try {
        const p = decode(input);
        decoded++;
        if ('options' in p) requestOptions(p.options);
      } catch (err) {
        if (!isDeskfuseError(err, 'DF_ERR_DECODE')) throw err;
      }
    }
    expect(decoded).toBeGreaterThan(0);
  });
});
