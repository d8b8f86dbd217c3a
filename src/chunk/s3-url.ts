import { dfError } from '../errors.js';

/**
 * Where an S3 store lives: `s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:7480&region=us-east-1`.
 * The endpoint defaults to AWS's regional one; requests are path-style (`ENDPOINT/BUCKET/KEY`), which
 * every S3 engine (RGW, MinIO, AWS) takes. Credentials never go in the URL (URLs end up in logs and
 * `ps`): the caller passes them (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the config file).
 */
export interface S3Location {
  bucket: string;
  /** '' or a key prefix ending in '/'. */
  prefix: string;
  /** Origin and base path of the S3 API, no trailing slash (http://127.0.0.1:7480). */
  endpoint: string;
  region: string;
}

// Bucket naming rules (AWS "Bucket naming rules"): 3–63 of a-z 0-9 . -, starting and ending alphanumeric.
const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const REGION_RE = /^[a-z0-9-]{1,40}$/;
const PARAMS = new Set(['endpoint', 'region']);

function bad(message: string): never {
  throw dfError('DF_ERR_CONFIG', `store URL: ${message}`, { field: 'store' });
}

export function parseS3Url(text: string): S3Location {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    bad('not a URL; expected s3://BUCKET/PREFIX?endpoint=…&region=…');
  }
  if (url.protocol !== 's3:') bad(`expected the s3:// scheme, got ${url.protocol}`);
  if (url.username || url.password) bad('credentials do not go in the URL; give them as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY');
  const bucket = url.hostname;
  if (!BUCKET_RE.test(bucket) || bucket.includes('..')) bad(`${JSON.stringify(bucket)} is not a valid bucket name (3–63 of a-z 0-9 . -)`);
  if (url.port) bad('a bucket has no port; the endpoint goes in ?endpoint=');
  for (const k of url.searchParams.keys()) if (!PARAMS.has(k)) bad(`unknown parameter ${JSON.stringify(k)} (known: endpoint, region)`);

  // From the text itself: URL parsing would quietly resolve "a/../b" to "b/".
  const rawPath = text.replace(/^s3:\/\/[^/?#]*/i, '').split(/[?#]/)[0]!;
  let prefix: string;
  try {
    prefix = decodeURIComponent(rawPath).replace(/^\/+/, '');
  } catch {
    bad('the prefix is not valid percent-encoding');
  }
  if (prefix && !prefix.endsWith('/')) prefix += '/';
  if (prefix.split('/').slice(0, -1).some((p) => p === '' || p === '.' || p === '..')) bad(`prefix ${JSON.stringify(prefix)} has an empty, . or .. segment`);

  const region = url.searchParams.get('region') ?? 'us-east-1';
  if (!REGION_RE.test(region)) bad(`${JSON.stringify(region)} is not a region name`);

  const endpointText = url.searchParams.get('endpoint') ?? `https://s3.${region}.amazonaws.com`;
  let endpoint: URL;
  try {
    endpoint = new URL(endpointText);
  } catch {
    bad(`endpoint ${JSON.stringify(endpointText)} is not a URL`);
  }
  if (endpoint.protocol !== 'http:' && endpoint.protocol !== 'https:') bad(`endpoint must be http:// or https://, got ${endpoint.protocol}`);
  if (endpoint.username || endpoint.password) bad('credentials do not go in the endpoint URL');
  if (endpoint.search || endpoint.hash) bad('the endpoint takes no query or fragment');
  return { bucket, prefix, endpoint: `${endpoint.origin}${endpoint.pathname.replace(/\/+$/, '')}`, region };
}
