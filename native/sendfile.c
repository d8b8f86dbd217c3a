/*
 * sendfile(sockFd, fileFd, offset, length, idleMs, cb(err, sent)): send a file's bytes to a TCP socket
 * with sendfile(2), from the page cache to the socket without a copy through the process, on one
 * sender thread for the whole process (epoll, edge-triggered EPOLLOUT), so the event loop neither
 * reads, allocates nor writes the body and a slow reader costs nothing while it is slow.
 *
 * Both descriptors are dup()ed when the call is made: whatever Node does with its own (a client gone,
 * the socket destroyed, the file handle closed), the sender writes to the same socket and reads the
 * same file, and closes its copies when the job ends. cb runs on the main thread with (null, sent)
 * when `length` bytes went out, or (Error{code}, sent): EPIPE/ECONNRESET (the reader left), ETIMEDOUT
 * (no progress for idleMs), ENODATA (the file is shorter than offset + length).
 * The caller must not write to the socket until cb ran. One Node environment (the main thread) may
 * use it.
 */
#define _GNU_SOURCE
#include "deskfuse_native.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/sendfile.h>
#include <time.h>
#include <unistd.h>

typedef struct job {
  int sock, file;
  int64_t off, end, sent, idle_ms, deadline;
  int err;
  napi_ref cb;
  struct job *next, *prev; /* the sender's active list */
  struct job *queued;      /* submitted, not yet taken by the sender */
} job;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static job *submitted; /* guarded by mu */
static int ep = -1, wake = -1;
static napi_threadsafe_function tsfn;
static napi_env owner;
static job *active; /* the sender thread's only */

static int64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void finish(job *j, int err) {
  epoll_ctl(ep, EPOLL_CTL_DEL, j->sock, NULL);
  close(j->sock);
  close(j->file);
  if (j->prev) j->prev->next = j->next; else active = j->next;
  if (j->next) j->next->prev = j->prev;
  j->err = err;
  napi_call_threadsafe_function(tsfn, j, napi_tsfn_blocking);
}

/* Send until done or the socket is full (EAGAIN: wait for EPOLLOUT). */
static void pump(job *j) {
  while (j->off < j->end) {
    off_t o = (off_t)j->off;
    size_t n = (size_t)(j->end - j->off);
    if (n > 0x7ffff000) n = 0x7ffff000; /* sendfile's largest count */
    ssize_t r = sendfile(j->sock, j->file, &o, n);
    if (r > 0) {
      j->off = o;
      j->sent += r;
      j->deadline = now_ms() + j->idle_ms;
    } else if (r == 0) {
      finish(j, ENODATA);
      return;
    } else if (errno == EAGAIN) {
      return;
    } else if (errno != EINTR) {
      finish(j, errno);
      return;
    }
  }
  finish(j, 0);
}

static void take_submitted(void) {
  uint64_t x;
  while (read(wake, &x, sizeof x) > 0) {}
  pthread_mutex_lock(&mu);
  job *q = submitted;
  submitted = NULL;
  pthread_mutex_unlock(&mu);
  job *fifo = NULL; /* submitted is newest first */
  while (q) { job *n = q->queued; q->queued = fifo; fifo = q; q = n; }
  while (fifo) {
    job *j = fifo;
    fifo = j->queued;
    j->prev = NULL;
    j->next = active;
    if (active) active->prev = j;
    active = j;
    j->deadline = now_ms() + j->idle_ms;
    struct epoll_event e = { .events = EPOLLOUT | EPOLLET, .data.ptr = j };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, j->sock, &e) < 0) finish(j, errno);
    else pump(j);
  }
}

static void *sender(void *arg) {
  struct epoll_event ev[64];
  for (;;) {
    int n = epoll_wait(ep, ev, 64, 1000);
    for (int i = 0; i < n; i++) {
      if (ev[i].data.ptr == NULL) take_submitted();
      else pump((job *)ev[i].data.ptr);
    }
    int64_t now = now_ms();
    for (job *j = active, *next; j; j = next) {
      next = j->next;
      if (j->deadline <= now) finish(j, ETIMEDOUT);
    }
  }
  return NULL;
}

/* On the main thread: the job's callback, then the job is freed. */
static void call_js(napi_env env, napi_value unused, void *ctx, void *data) {
  job *j = data;
  if (env) {
    napi_value cb, argv[2], undef;
    if (j->err) argv[0] = df_errno_error(env, j->err, "sendfile", NULL);
    else napi_get_null(env, &argv[0]);
    napi_create_double(env, (double)j->sent, &argv[1]);
    napi_get_undefined(env, &undef);
    if (napi_get_reference_value(env, j->cb, &cb) == napi_ok) napi_call_function(env, undef, cb, 2, argv, NULL);
    napi_delete_reference(env, j->cb);
  }
  free(j);
}

static napi_value fail(napi_env env, int err, const char *what) {
  napi_throw(env, df_errno_error(env, err, what, NULL));
  return NULL;
}

/* The sender thread, its epoll set and wake-up eventfd, made on first use. */
static int start(napi_env env) {
  if (ep >= 0) return 0;
  napi_value name;
  napi_create_string_utf8(env, "deskfuse sendfile", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, NULL, call_js, &tsfn) != napi_ok) return EINVAL;
  napi_unref_threadsafe_function(env, tsfn); /* the sockets keep the process alive, not the sender */
  int e = epoll_create1(EPOLL_CLOEXEC);
  if (e < 0) return errno;
  int w = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (w < 0) { int err = errno; close(e); return err; }
  struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
  if (epoll_ctl(e, EPOLL_CTL_ADD, w, &ev) < 0) { int err = errno; close(e); close(w); return err; }
  ep = e;
  wake = w;
  pthread_t t;
  pthread_attr_t a;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  int err = pthread_create(&t, &a, sender, NULL);
  pthread_attr_destroy(&a);
  if (err) return err;
  owner = env;
  return 0;
}

napi_value df_sendfile(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  int64_t sock, file, off, len, idle;
  napi_valuetype t;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 6) {
    napi_throw_type_error(env, "DF_ERR_NATIVE", "sendfile(sockFd, fileFd, offset, length, idleMs, cb)");
    return NULL;
  }
  if (napi_get_value_int64(env, argv[0], &sock) != napi_ok || napi_get_value_int64(env, argv[1], &file) != napi_ok ||
      napi_get_value_int64(env, argv[2], &off) != napi_ok || napi_get_value_int64(env, argv[3], &len) != napi_ok ||
      napi_get_value_int64(env, argv[4], &idle) != napi_ok || napi_typeof(env, argv[5], &t) != napi_ok || t != napi_function ||
      sock < 0 || file < 0 || off < 0 || len < 0 || idle <= 0) {
    napi_throw_type_error(env, "DF_ERR_NATIVE", "sendfile: fds, offset and length must be numbers >= 0, idleMs > 0, cb a function");
    return NULL;
  }
  if (ep < 0) {
    int err = start(env);
    if (err) return fail(env, err, "sendfile (starting the sender thread)");
  } else if (env != owner) {
    napi_throw_error(env, "DF_ERR_NATIVE", "sendfile: only the main thread may send");
    return NULL;
  }
  job *j = calloc(1, sizeof *j);
  if (!j) return fail(env, ENOMEM, "sendfile");
  j->sock = fcntl((int)sock, F_DUPFD_CLOEXEC, 0);
  if (j->sock < 0) { int err = errno; free(j); return fail(env, err, "sendfile (dup of the socket)"); }
  j->file = fcntl((int)file, F_DUPFD_CLOEXEC, 0);
  if (j->file < 0) { int err = errno; close(j->sock); free(j); return fail(env, err, "sendfile (dup of the file)"); }
  /* O_NONBLOCK belongs to the socket's open file, shared with Node's descriptor: it is set already */
  int fl = fcntl(j->sock, F_GETFL);
  if (fl < 0 || !(fl & O_NONBLOCK)) {
    close(j->sock); close(j->file); free(j);
    return fail(env, EINVAL, "sendfile (the socket is blocking)");
  }
  j->off = off;
  j->end = off + len;
  j->idle_ms = idle;
  napi_create_reference(env, argv[5], 1, &j->cb);
  pthread_mutex_lock(&mu);
  j->queued = submitted;
  submitted = j;
  pthread_mutex_unlock(&mu);
  uint64_t one = 1;
  if (write(wake, &one, sizeof one) < 0 && errno != EAGAIN) { /* the counter is full: the sender is awake anyway */ }
  return NULL;
}
