import { describe, expect, it } from 'vitest';
import { cleanDetail, cleanText } from './untrusted.js';

describe('untrusted endpoint text', () => {
  it('one printable line: control characters, line separators and ${ lose their meaning; long text is cut', () => {
    expect(cleanText('disk error\nat sector 5\r\n\tretry ${mac}')).toBe('disk error at sector 5 retry $ {mac}');
    expect(cleanText('a\u2028b\u0000c\u009bd')).toBe('a b c d');
    const long = cleanText('x'.repeat(2000));
    expect(long).toHaveLength(500);
    expect(long.endsWith('…')).toBe(true);
  });

  it('cleans every string of a reported detail, nested too, and bounds its shape', () => {
    const d = cleanDetail({ error: 'E1\nE2', n: 3, nested: { list: ['a\nb', 1], deep: { a: { b: { c: 'x' } } } } });
    expect(d).toEqual({ error: 'E1 E2', n: 3, nested: { list: ['a b', 1], deep: { a: { b: '[nested too deep]' } } } });
  });
});
