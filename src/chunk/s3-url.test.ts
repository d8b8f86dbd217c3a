import { describe, expect, it } from 'vitest';
import { thrown } from '../../test/helpers/expect.js';
import { parseS3Url } from './s3-url.js';

describe('parseS3Url', () => {
  it('reads bucket, prefix, endpoint and region', () => {
    expect(parseS3Url('s3://chunks/site-a/store?endpoint=http://127.0.0.1:7480&region=eu-1')).toEqual({
      bucket: 'chunks', prefix: 'site-a/store/', endpoint: 'http://127.0.0.1:7480', region: 'eu-1',
    });
    expect(parseS3Url('s3://my.bucket-1?endpoint=https%3A%2F%2Fs3.example.org%2Fbase%2F')).toEqual({
      bucket: 'my.bucket-1', prefix: '', endpoint: 'https://s3.example.org/base', region: 'us-east-1',
    });
  });

  it("defaults the endpoint to AWS's regional one", () => {
    expect(parseS3Url('s3://b12/p/?region=eu-west-3').endpoint).toBe('https://s3.eu-west-3.amazonaws.com');
  });

  it.each([
    ['http://bucket/p', 'expected the s3:// scheme'],
    ['not a url', 'not a URL'],
    ['s3://AK:secret@bucket/p', 'credentials do not go in the URL'],
    ['s3://Bad_Bucket/p', 'not a valid bucket name'],
    ['s3://ab/p', 'not a valid bucket name'],
    ['s3://bucket:9000/p', 'a bucket has no port'],
    ['s3://bucket/p?endpont=http://x', 'unknown parameter "endpont"'],
    ['s3://bucket/a//b', 'empty, . or .. segment'],
    ['s3://bucket/a/../b', 'empty, . or .. segment'],
    ['s3://bucket/p?endpoint=ftp://x', 'endpoint must be http:// or https://'],
    ['s3://bucket/p?endpoint=http://u:pw@x', 'credentials do not go in the endpoint URL'],
    ['s3://bucket/p?region=EU WEST', 'is not a region name'],
  ])('refuses %s with DF_ERR_CONFIG (%s)', (url, msg) => {
    const err = thrown(() => parseS3Url(url));
    expect(err.code).toBe('DF_ERR_CONFIG');
    expect(err.message).toContain(msg);
    expect(err.message).not.toContain('secret');
    expect(err.message).not.toContain(':pw');
  });
});
