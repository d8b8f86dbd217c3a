import { describe, expect, it } from 'vitest';
import { EMPTY_SHA256, canonicalQuery, sha256Hex, signV4, uriEncode } from './s3-sigv4.js';

// The examples of AWS's "Signature Calculations for the Authorization Header: Transferring Payload
// in a Single Chunk" (Amazon S3 API reference, sig-v4-header-based-auth), with their published keys.
const cred = { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' };
const host = 'examplebucket.s3.amazonaws.com';
const date = '20130524T000000Z';

describe('signV4', () => {
  it('signs the AWS "GET Object" example to its published signature', () => {
    const h = signV4(
      { method: 'GET', path: '/test.txt', query: '', headers: { Host: host, Range: 'bytes=0-9', 'x-amz-date': date }, payloadHash: EMPTY_SHA256, region: 'us-east-1' },
      cred,
    );
    expect(h.authorization).toBe(
      'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41',
    );
    expect(h['x-amz-content-sha256']).toBe(EMPTY_SHA256);
    expect(h['x-amz-date']).toBe(date);
  });

  it('signs the AWS "PUT Object" example (an encoded key, a signed body) to its published signature', () => {
    const body = 'Welcome to Amazon S3.';
    const h = signV4(
      {
        method: 'PUT',
        path: `/${uriEncode('test$file.text', true)}`,
        query: '',
        headers: { Host: host, Date: 'Fri, 24 May 2013 00:00:00 GMT', 'x-amz-date': date, 'x-amz-storage-class': 'REDUCED_REDUNDANCY' },
        payloadHash: sha256Hex(body),
        region: 'us-east-1',
      },
      cred,
    );
    expect(h['x-amz-content-sha256']).toBe('44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072');
    expect(h.authorization).toMatch(/SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd$/);
  });

  it('signs the AWS "GET Bucket (List Objects)" example (a canonical query) to its published signature', () => {
    const query = canonicalQuery({ prefix: 'J', 'max-keys': '2' });
    expect(query).toBe('max-keys=2&prefix=J');
    const h = signV4({ method: 'GET', path: '/', query, headers: { Host: host, 'x-amz-date': date }, payloadHash: EMPTY_SHA256, region: 'us-east-1' }, cred);
    expect(h.authorization).toMatch(/Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7$/);
  });

  it('encodes like RFC 3986: unreserved characters kept, the rest (and / in query values) escaped', () => {
    expect(uriEncode("a b/c~d-e_f.g!'()*", true)).toBe('a%20b/c~d-e_f.g%21%27%28%29%2A');
    expect(canonicalQuery({ 'continuation-token': 'a/b+c=', 'list-type': '2' })).toBe('continuation-token=a%2Fb%2Bc%3D&list-type=2');
  });

  it('adds the session token of temporary credentials as a signed header', () => {
    const h = signV4({ method: 'GET', path: '/', query: '', headers: { host, 'x-amz-date': date }, payloadHash: EMPTY_SHA256, region: 'us-east-1' }, { ...cred, sessionToken: 'tok' });
    expect(h['x-amz-security-token']).toBe('tok');
    expect(h.authorization).toContain('SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,');
  });
});
