import { createHash, createHmac } from 'node:crypto';

/**
 * AWS Signature Version 4 for S3 requests in the Authorization header (AWS "Signature Calculations
 * for the Authorization Header", sig-v4-header-based-auth). Small on purpose: path-style requests,
 * headers given in full by the caller, the payload hash sent as x-amz-content-sha256 (RGW wants it).
 * The secret never leaves this function except as an HMAC.
 */
export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  /** Temporary credentials (STS) carry a session token, sent as x-amz-security-token. */
  sessionToken?: string;
}

export const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

export function sha256Hex(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** RFC 3986 percent-encoding of everything but the unreserved characters, as SigV4 wants it. */
export function uriEncode(s: string, keepSlash = false): string {
  const e = encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  return keepSlash ? e.replace(/%2F/g, '/') : e;
}

/** The query string in canonical order (by encoded name, then value); the request must send exactly this. */
export function canonicalQuery(query: Record<string, string>): string {
  return Object.entries(query)
    .map(([k, v]) => [uriEncode(k), uriEncode(v)] as const)
    .sort(([a, av], [b, bv]) => (a < b ? -1 : a > b ? 1 : av < bv ? -1 : av > bv ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
}

export interface SignInput {
  method: string;
  /** The path exactly as sent: already encoded with uriEncode(…, true). */
  path: string;
  /** The query exactly as sent: canonicalQuery(…). */
  query: string;
  /** Every header to sign (names any case); `host` is required. */
  headers: Record<string, string>;
  payloadHash: string;
  region: string;
  service?: string;
  now?: Date;
}

/** The x-amz-date (ISO 8601 basic) of `now`. */
export function amzDate(now: Date): string {
  return now.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
}

/**
 * The headers to add to the request: x-amz-date, x-amz-content-sha256, (x-amz-security-token),
 * authorization. `input.headers` may already hold x-amz-date (then it is used as the request time).
 */
export function signV4(input: SignInput, cred: S3Credentials): Record<string, string> {
  const service = input.service ?? 's3';
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(input.headers)) headers[k.toLowerCase()] = v;
  const date = headers['x-amz-date'] ?? amzDate(input.now ?? new Date());
  const added: Record<string, string> = { 'x-amz-date': date, 'x-amz-content-sha256': input.payloadHash };
  if (cred.sessionToken) added['x-amz-security-token'] = cred.sessionToken;
  Object.assign(headers, added);

  const names = Object.keys(headers).sort();
  const canonicalHeaders = names.map((n) => `${n}:${headers[n]!.trim().replace(/\s+/g, ' ')}\n`).join('');
  const signedHeaders = names.join(';');
  const canonicalRequest = [input.method, input.path, input.query, canonicalHeaders, signedHeaders, input.payloadHash].join('\n');
  const day = date.slice(0, 8);
  const scope = `${day}/${input.region}/${service}/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', date, scope, sha256Hex(canonicalRequest)].join('\n');

  const hmac = (key: string | Buffer, data: string) => createHmac('sha256', key).update(data).digest();
  const kSigning = hmac(hmac(hmac(hmac(`AWS4${cred.secretAccessKey}`, day), input.region), service), 'aws4_request');
  const signature = createHmac('sha256', kSigning).update(stringToSign).digest('hex');
  return {
    ...added,
    authorization: `AWS4-HMAC-SHA256 Credential=${cred.accessKeyId}/${scope},SignedHeaders=${signedHeaders},Signature=${signature}`,
  };
}
