import { dfError } from '../errors.js';

/** `sha256:ab:cd…`, `ABCD…`, `ab cd` → `AB:CD:…`; DF_ERR_USAGE for anything but 32 bytes of hex. */
export function normalizeFingerprint(s: string): string {
  const hex = s.trim().replace(/^sha-?256:/i, '').replace(/[:\s]/g, '').toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) {
    throw dfError('DF_ERR_USAGE', `a CA fingerprint is the SHA-256 of the certificate: 64 hex digits (colons allowed), got ${JSON.stringify(s)}`, { option: 'ca-fingerprint' });
  }
  return hex.match(/../g)!.join(':');
}

/** Every certificate in a PEM bundle, in order. */
export function splitPem(pem: string): string[] {
  return pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)?.map((c) => `${c}\n`) ?? [];
}
