import { describe, expect, it } from 'vitest';
import { redactExportName, splitExportName } from './exports.js';

describe('export names', () => {
  it('carry the secret after the last colon; logs never see it', () => {
    expect(splitExportName('win@main:dfa_x-y_z')).toEqual({ target: 'win@main', secret: 'dfa_x-y_z' });
    expect(splitExportName('win@desktops/alice:t')).toEqual({ target: 'win@desktops/alice', secret: 't' });
    expect(splitExportName('session/0123456789:dfv_s')).toEqual({ target: 'session/0123456789', secret: 'dfv_s' });
    expect(splitExportName('win@main')).toEqual({ target: 'win@main', secret: undefined });
    expect(redactExportName('session/0123456789:dfv_s')).toBe('session/0123456789:…');
    expect(redactExportName('win@3')).toBe('win@3');
  });
});
