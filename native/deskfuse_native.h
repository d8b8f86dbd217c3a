/* What the files of the native addon share (every native/ C file is compiled into one .node). */
#ifndef DESKFUSE_NATIVE_H
#define DESKFUSE_NATIVE_H
#include <node_api.h>

/* An Error with .code (errno name), .errno and .syscall, as Node's own; not thrown. */
napi_value df_errno_error(napi_env env, int err, const char *syscall, const char *detail);

/* sendfile(sockFd, fileFd, offset, length, idleMs, cb): native/sendfile.c */
napi_value df_sendfile(napi_env env, napi_callback_info info);
/* sendParts(sockFd, parts, idleMs, cb), sendRate(bytesPerSecond), sendStats(), sendForget(): native/sendfile.c */
napi_value df_send_parts(napi_env env, napi_callback_info info);
napi_value df_send_rate(napi_env env, napi_callback_info info);
napi_value df_send_stats(napi_env env, napi_callback_info info);
napi_value df_send_forget(napi_env env, napi_callback_info info);
napi_value df_send_pack(napi_env env, napi_callback_info info);
/* fingerprint(data, out, at): XXH3-128 into out[at, at+16): native/fingerprint.c */
napi_value df_fingerprint(napi_env env, napi_callback_info info);
/* fingerprintFile(fd, start, chunkSize, count, lastLength, holes, out, outAt, cb): native/fingerprint.c */
napi_value df_fingerprint_file(napi_env env, napi_callback_info info);
/* mallocTrim(): glibc malloc_trim(0) (native/fingerprint.c) */
napi_value df_malloc_trim(napi_env env, napi_callback_info info);
/* mallocTune(mmapThreshold, arenaMax): glibc mallopt (native/fingerprint.c) */
napi_value df_malloc_tune(napi_env env, napi_callback_info info);

#endif
