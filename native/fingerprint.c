/*
 * fingerprint(data, out, at): XXH3-128 of `data` (any Uint8Array/Buffer), written big-endian
 * (XXH128_canonical_t: high 64 bits first) into out[at, at + 16). The scan's cheap change test
 * (src/sync/scan-core.ts): never a chunk id (those are BLAKE3), only "did this chunk change since
 * its id was recorded". xxhash.h is xxHash 0.8.1 (BSD 2-Clause, its header names the licence),
 * inlined here: no library to link, the SSE2 (x86-64) or NEON (aarch64) path the compiler targets.
 */
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
