import type { FastifyError, FastifyInstance } from 'fastify';
import { isNoSpace } from '../src/fs/io-errors.js';
import { DeskfuseError, dfError } from '../src/errors.js';

/** Map every error to `{code, message, …fields}` with a stable DF_ERR_* code. */
export function installErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | DeskfuseError | Error, req, reply) => {
    // The route may have dressed its reply already (a delta's type, length, caching): an error is
    // always uncached JSON of its own length.
    for (const h of ['content-length', 'etag', 'cache-control']) reply.removeHeader(h);
    reply.type('application/json; charset=utf-8');
    if (err instanceof DeskfuseError) {
      if (err.status >= 500) req.log.error({ err }, err.message);
      else req.log.debug({ code: err.code }, err.message);
      return reply.status(err.status).send(err.toJSON());
    }
    const fe = err as FastifyError;
    if (fe.validation) {
      const v = fe.validation[0];
      const field = v ? `${fe.validationContext ?? 'body'}${v.instancePath ? v.instancePath.replace(/\//g, '.') : ''}${v.params && 'missingProperty' in v.params ? `.${String(v.params.missingProperty)}` : ''}${v.params && 'additionalProperty' in v.params ? `.${String(v.params.additionalProperty)}` : ''}` : fe.validationContext;
      return reply.status(400).send({ code: 'DF_ERR_BAD_REQUEST', message: `${field}: ${v?.message ?? fe.message}`, field });
    }
    if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      const limit = req.routeOptions.bodyLimit;
      return reply.status(413).send({ code: 'DF_ERR_TOO_LARGE', message: `the body is larger than the ${limit} bytes ${req.method} ${req.routeOptions.url ?? ''} takes`, limit });
    }
    if (fe.statusCode && fe.statusCode < 500) {
      return reply.status(fe.statusCode).send({ code: 'DF_ERR_BAD_REQUEST', message: fe.message, fastifyCode: fe.code });
    }
    // A full disk under any other writer (SQLite, a cache file) still gets its code, not a bare 500.
    if (isNoSpace(err) || (err as { code?: unknown }).code === 'SQLITE_FULL') {
      req.log.error({ err }, 'the data directory is full');
      return reply.status(507).send(dfError('DF_ERR_NO_SPACE', "the server's store is full; free space on the server and retry").toJSON());
    }
    req.log.error({ err }, 'unhandled error');
    return reply.status(500).send({ code: 'DF_ERR_INTERNAL', message: 'internal error' });
  });
  app.setNotFoundHandler((req, reply) => reply.status(404).send({ code: 'DF_ERR_NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` }));
}
