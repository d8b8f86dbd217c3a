import { describe, expect, it } from 'vitest';
import { DeskfuseError } from '../errors.js';
import { checkImageName, checkRefName, conflictRefName, isConflictRef, parseImageRev, refNameProblem } from './names.js';
import { thrown } from '../../test/helpers/expect.js';

describe('image names', () => {
  it.each(['win11', '0', 'a.b_c-d', 'x'.repeat(64)])('accepts %j', (n) => {
    expect(checkImageName(n)).toBe(n);
  });

  it.each(['', 'Win11', '-win', '.win', '_win', 'win 11', 'win/11', 'win@1', 'x'.repeat(65), 'wïn'])('refuses %j with DF_ERR_BAD_REQUEST', (n) => {
    const err = thrown(() => checkImageName(n));
    expect(err.code).toBe('DF_ERR_BAD_REQUEST');
    expect(err.fields).toEqual({ field: 'name' });
    expect(err.message).toContain(JSON.stringify(n));
  });
});

describe('ref names', () => {
  it.each(['main', 'Main', 'desktops/alice', 'a/b/c', 'v1.2', 'x_y-z', 'conflicts/main/20261128T102030-123Z', 'a'.repeat(200)])('accepts %j', (n) => {
    expect(refNameProblem(n)).toBeUndefined();
    expect(checkRefName(n)).toBe(n);
  });

  it.each([
    ['', 'must be 1-200 characters'],
    ['a'.repeat(201), 'must be 1-200 characters'],
    ['/main', 'segment ""'],
    ['main/', 'segment ""'],
    ['a//b', 'segment ""'],
    ['.hidden', 'segment ".hidden"'],
    ['-x', 'segment "-x"'],
    ['a/b.lock', 'segment "b.lock"'],
    ['a..b', 'segment "a..b"'],
    ['has space', 'segment "has space"'],
    ['a@b', 'segment "a@b"'],
    ['x~1', 'segment "x~1"'],
  ])('refuses %j', (n, problem) => {
    expect(refNameProblem(n)).toContain(problem);
    const err = thrown(() => checkRefName(n, 'target'));
    expect(err.code).toBe('DF_ERR_REF_NAME');
    expect(err.fields).toEqual({ field: 'target', ref: n });
  });
});

describe('parseImageRev', () => {
  it.each([
    ['win11', { image: 'win11', rev: 'main' }],
    ['win11@main', { image: 'win11', rev: 'main' }],
    ['win11@desktops/alice', { image: 'win11', rev: 'desktops/alice' }],
    ['win11@42', { image: 'win11', rev: '42' }],
    ['win11@007', { image: 'win11', rev: '007' }],
  ])('%j', (spec, want) => {
    expect(parseImageRev(spec)).toEqual(want);
  });

  it.each([
    ['@main', 'DF_ERR_BAD_REQUEST'],
    ['Win11@main', 'DF_ERR_BAD_REQUEST'],
    ['win11@', 'DF_ERR_REF_NAME'],
    ['win11@a..b', 'DF_ERR_REF_NAME'],
    ['win11@a@b', 'DF_ERR_REF_NAME'],
    ['win11@-1', 'DF_ERR_REF_NAME'],
  ])('refuses %j with %s', (spec, code) => {
    expect(thrown(() => parseImageRev(spec)).code).toBe(code);
  });

  it('names the rev field for a bad ref', () => {
    expect(thrown(() => parseImageRev('win11@x/')).fields.field).toBe('rev');
  });
});

describe('conflict refs', () => {
  it('conflictRefName is conflicts/<ref>/<compact UTC stamp with milliseconds>', () => {
    const at = new Date('2026-11-28T10:20:30.123Z');
    expect(conflictRefName('main', at)).toBe('conflicts/main/20261128T102030-123Z');
    expect(conflictRefName('desktops/alice', at)).toBe('conflicts/desktops/alice/20261128T102030-123Z');
  });

  it('is a valid ref name that sorts by time and is recognised as a conflict ref', () => {
    const a = conflictRefName('main', new Date('2026-01-02T03:04:05.006Z'));
    const b = conflictRefName('main', new Date('2026-01-02T03:04:05.007Z'));
    expect(refNameProblem(a)).toBeUndefined();
    expect(a < b).toBe(true);
    expect(isConflictRef(a)).toBe(true);
    expect(isConflictRef('main')).toBe(false);
    expect(isConflictRef('conflictsx/main')).toBe(false);
  });
});
