/*
 * fingerprint(data, out, at): XXH3-128 of `data` (any Uint8Array/Buffer), written big-endian
 * (XXH128_canonical_t: high 64 bits first) into out[at, at + 16). The scan's cheap change test
 * (src/sync/scan-core.ts): never a chunk id (those are BLAKE3), only "did this chunk change since
 * its id was recorded". xxhash.h is xxHash 0.8.1 (BSD 2-Clause, its header names the licence),
 * inlined here: no library to link, the SSE2 (x86-64) or NEON (aarch64) path the compiler targets.
 */
#define _GNU_SOURCE /* SEEK_DATA, SEEK_HOLE */
#define XXH_INLINE_ALL
#define XXH_STATIC_LINKING_ONLY
#include "xxhash.h"
#include <node_api.h>
#include "deskfuse_native.h"

static int bytes_of(napi_env env, napi_value v, void **data, size_t *len) {
  bool is;
  if (napi_is_buffer(env, v, &is) == napi_ok && is) return napi_get_buffer_info(env, v, data, len) == napi_ok;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type t;
    napi_value ab;
    size_t off;
    if (napi_get_typedarray_info(env, v, &t, len, data, &ab, &off) != napi_ok || t != napi_uint8_array) return 0;
    return 1;
  }
  return 0;
}

napi_value df_fingerprint(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  void *data, *out;
  size_t len, outLen;
  int64_t at;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3) {
    napi_throw_type_error(env, "DF_ERR_NATIVE", "fingerprint(data, out, at): too few arguments");
    return NULL;
  }
  if (!bytes_of(env, argv[0], &data, &len) || !bytes_of(env, argv[1], &out, &outLen)) {
    napi_throw_type_error(env, "DF_ERR_NATIVE", "fingerprint: data and out must be Uint8Arrays");
    return NULL;
  }
  if (napi_get_value_int64(env, argv[2], &at) != napi_ok || at < 0 || (size_t)at + 16 > outLen) {
    napi_throw_range_error(env, "DF_ERR_NATIVE", "fingerprint: at must leave 16 bytes in out");
    return NULL;
  }
  XXH128_hash_t h = XXH3_128bits(data, len);
  XXH128_canonicalFromHash((XXH128_canonical_t *)((unsigned char *)out + at), h);
  return NULL;
}

/*
 * mallocTune(mmapThreshold, arenaMax) -> bool: glibc's mallopt for a process whose buffers come and
 * go by the megabyte (the agent). Left alone, glibc raises its mmap threshold to the size of every
 * mmapped block freed (up to 32 MiB), after which buffers of that size are carved from the heap and
 * arenas, whose freed pages stay in the RSS; worker threads each get an arena of their own. A fixed
 * threshold keeps big buffers mmapped (returned to the system when freed), a cap bounds the arenas.
 * false where the C library is not glibc (nothing done).
 */
#ifdef __GLIBC__
#include <malloc.h>
#endif
napi_value df_malloc_tune(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], ret;
  int32_t thr = 0, arenas = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc >= 1) napi_get_value_int32(env, argv[0], &thr);
  if (argc >= 2) napi_get_value_int32(env, argv[1], &arenas);
  bool ok = false;
#ifdef __GLIBC__
  ok = true;
  if (thr > 0) ok = mallopt(M_MMAP_THRESHOLD, thr) == 1 && ok;
  if (arenas > 0) ok = mallopt(M_ARENA_MAX, arenas) == 1 && ok;
#endif
  napi_get_boolean(env, ok, &ret);
  return ret;
}

/* mallocTrim() -> bool: glibc's malloc_trim(0), the free pages of every arena back to the system (the
 * scan's worker threads leave theirs behind when they exit); false where the C library is not glibc. */
napi_value df_malloc_trim(napi_env env, napi_callback_info info) {
  napi_value ret;
  bool ok = false;
#ifdef __GLIBC__
  malloc_trim(0);
  ok = true;
#endif
  napi_get_boolean(env, ok, &ret);
  return ret;
}

/*
 * fingerprintFile(fd, start, chunkSize, count, lastLength, holes, out, outAt, cb): XXH3-128 of `count`
 * chunks of the file from byte `start` (the last one `lastLength` bytes) into out[outAt, outAt + 16 count),
 * on libuv's thread pool; cb(err, bytesRead). The scan's first pass (src/sync/scan-core.ts,
 * fingerprintPass): no worker thread, no JavaScript per chunk. With `holes`, a chunk that holds no
 * data (lseek SEEK_DATA) is not read: its fingerprint is that of zeros, which is what a hole reads as.
 * Bytes past the end of the file count as zeros, as a short read does in the scan.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define FP_BATCH (4 * 1024 * 1024)

typedef struct {
  int fd, holes, err;
  const char *syscall;
  int64_t start, chunk, count, last;
  unsigned char *out;
  double bytes;
  napi_ref outRef, cb;
  napi_async_work work;
} fp_job;

static void fp_put(unsigned char *out, const void *data, size_t len) {
  XXH128_canonicalFromHash((XXH128_canonical_t *)out, XXH3_128bits(data, len));
}

static void fp_execute(napi_env env, void *data) {
  fp_job *j = data;
  size_t cap = (size_t)(j->chunk > FP_BATCH ? j->chunk : FP_BATCH / j->chunk * j->chunk);
  unsigned char *buf = malloc(cap);
  if (!buf) { j->err = ENOMEM; j->syscall = "malloc"; return; }
  int64_t dataAt = -1, holeAt = -1; /* the data extent last found: [dataAt, holeAt) */
  int seekable = j->holes;
  int64_t i = 0;
  while (i < j->count) {
    int64_t off = j->start + i * j->chunk;
    int64_t len = i == j->count - 1 ? j->last : j->chunk;
    if (seekable && off >= holeAt) {
      off_t d = lseek(j->fd, off, SEEK_DATA);
      if (d < 0 && errno == ENXIO) { dataAt = holeAt = INT64_MAX; }
      else if (d < 0 && (errno == EINVAL || errno == EOPNOTSUPP)) { seekable = 0; } /* no hole map: all data */
      else if (d < 0) { j->err = errno; j->syscall = "lseek(SEEK_DATA)"; break; }
      else {
        off_t h = lseek(j->fd, d, SEEK_HOLE);
        if (h < 0) { j->err = errno; j->syscall = "lseek(SEEK_HOLE)"; break; }
        dataAt = d; holeAt = h;
      }
    }
    if (seekable && off + len <= dataAt) { /* a chunk in a hole */
      memset(buf, 0, (size_t)len);
      fp_put(j->out + 16 * i, buf, (size_t)len);
      i++;
      continue;
    }
    /* a run of whole chunks, up to the batch, read at once (holes inside read as zeros) */
    int64_t k = 1;
    while (i + k < j->count && (k + 1) * j->chunk <= (int64_t)cap && !(seekable && j->start + (i + k) * j->chunk >= holeAt)) k++;
    int64_t want = (k - 1) * j->chunk + (i + k - 1 == j->count - 1 ? j->last : j->chunk);
    int64_t got = 0;
    while (got < want) {
      ssize_t r = pread(j->fd, buf + got, (size_t)(want - got), off + got);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) { j->err = errno; j->syscall = "read"; break; }
      if (r == 0) break;
      got += r;
    }
    if (j->err) break;
    if (got < want) memset(buf + got, 0, (size_t)(want - got));
    j->bytes += (double)got;
    for (int64_t x = 0; x < k; x++) {
      int64_t l = i + x == j->count - 1 ? j->last : j->chunk;
      fp_put(j->out + 16 * (i + x), buf + x * j->chunk, (size_t)l);
    }
    i += k;
  }
  free(buf);
}

static void fp_complete(napi_env env, napi_status status, void *data) {
  fp_job *j = data;
  napi_value cb, argv[2], undef;
  if (j->err) argv[0] = df_errno_error(env, j->err, j->syscall, NULL);
  else napi_get_null(env, &argv[0]);
  napi_create_double(env, j->bytes, &argv[1]);
  napi_get_undefined(env, &undef);
  if (napi_get_reference_value(env, j->cb, &cb) == napi_ok) napi_call_function(env, undef, cb, 2, argv, NULL);
  napi_delete_reference(env, j->cb);
  napi_delete_reference(env, j->outRef);
  napi_delete_async_work(env, j->work);
  free(j);
}

napi_value df_fingerprint_file(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9];
  int64_t v[6];
  void *out;
  size_t outLen;
  bool holes;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 9) {
    napi_throw_type_error(env, "DF_ERR_NATIVE", "fingerprintFile(fd, start, chunkSize, count, lastLength, holes, out, outAt, cb): too few arguments");
    return NULL;
  }
  for (int a = 0; a < 5; a++) {
    if (napi_get_value_int64(env, argv[a], &v[a]) != napi_ok || v[a] < 0) {
      napi_throw_type_error(env, "DF_ERR_NATIVE", "fingerprintFile: fd, start, chunkSize, count and lastLength must be numbers >= 0");
      return NULL;
    }
  }
  if (napi_get_value_int64(env, argv[7], &v[5]) != napi_ok || v[5] < 0 || napi_get_value_bool(env, argv[5], &holes) != napi_ok || !bytes_of(env, argv[6], &out, &outLen)) {
    napi_throw_type_error(env, "DF_ERR_NATIVE", "fingerprintFile: holes must be a boolean, out a Uint8Array, outAt a number");
    return NULL;
  }
  if (v[2] <= 0 || (v[3] > 0 && (v[4] <= 0 || v[4] > v[2])) || (size_t)v[5] + 16 * (size_t)v[3] > outLen) {
    napi_throw_range_error(env, "DF_ERR_NATIVE", "fingerprintFile: chunkSize > 0, 0 < lastLength <= chunkSize, and out must hold count fingerprints from outAt");
    return NULL;
  }
  napi_valuetype t;
  if (napi_typeof(env, argv[8], &t) != napi_ok || t != napi_function) {
    napi_throw_type_error(env, "DF_ERR_NATIVE", "fingerprintFile: cb must be a function");
    return NULL;
  }
  fp_job *j = calloc(1, sizeof *j);
  if (!j) { napi_throw_error(env, "DF_ERR_NATIVE", "fingerprintFile: out of memory"); return NULL; }
  j->fd = (int)v[0]; j->start = v[1]; j->chunk = v[2]; j->count = v[3]; j->last = v[4]; j->holes = holes;
  j->out = (unsigned char *)out + v[5];
  napi_create_reference(env, argv[6], 1, &j->outRef); /* `out` stays alive (and in place) while the job writes it */
  napi_create_reference(env, argv[8], 1, &j->cb);
  napi_value name;
  napi_create_string_utf8(env, "deskfuse fingerprintFile", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, fp_execute, fp_complete, j, &j->work) != napi_ok || napi_queue_async_work(env, j->work) != napi_ok) {
    napi_delete_reference(env, j->cb);
    napi_delete_reference(env, j->outRef);
    free(j);
    napi_throw_error(env, "DF_ERR_NATIVE", "fingerprintFile: cannot queue the work");
  }
  return NULL;
}
