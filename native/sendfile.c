/*
 * The sender thread: response bodies from files to TCP sockets with sendfile(2), from the page cache
 * to the socket without a copy through the process, on one thread for the whole process (epoll,
 * edge-triggered EPOLLOUT), so the event loop neither reads, allocates nor writes a body and a slow
 * reader costs nothing while it is slow.
 *
 *   sendfile(sockFd, fileFd, offset, length, idleMs, cb(err, sent))   one range of one open file
 *   sendParts(sockFd, parts, idleMs, cb(err, sent))   a body made of parts in order: a Buffer is sent
 *        as it is (copied at the call), [path, size] is the whole file at path, opened by the sender
 *        when its turn comes and refused (ESTALE) unless it is exactly `size` bytes. A pack of stored
 *        chunk frames goes out this way: record heads from memory, frames straight from their files.
 *   sendRate(bytesPerSecond)   a token bucket over every body this thread sends (0: no cap), so a
 *        storm cannot fill the uplink; jobs share it in turns of at most QUANTUM bytes.
 *   sendStats() -> {active, bytes, throttled, rate}   throttled: times the sender waited for the bucket.
 *   sendForget()   the sender closes the part files it keeps open (the store removed or quarantined
 *        files: they must not be served from a descriptor kept open).
 *
 * Descriptors are dup()ed when the call is made: whatever Node does with its own (a client gone, the
 * socket destroyed, the file handle closed), the sender writes to the same socket and reads the same
 * file, and closes its copies when the job ends. cb runs on the main thread with (null, sent) when
 * every byte went out, or (Error{code}, sent): EPIPE/ECONNRESET (the reader left), ETIMEDOUT (no
 * progress for idleMs while the reader could take bytes), ENODATA (a file is shorter than asked),
 * ENOENT/ESTALE (a part's file is gone or changed). The caller must not write to the socket until cb
 * ran. One Node environment (the main thread) may use it.
 */
#define _GNU_SOURCE
#include "deskfuse_native.h"
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/resource.h>
#include <sys/eventfd.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define QUANTUM (1024 * 1024) /* a job's turn: many bodies progress together, none hogs the thread */

typedef struct seg {
  int64_t off, len; /* a memory part: offset in the job's arena; a file part: offset in the file */
  char *path;       /* a file part opened by the sender, or NULL */
  int fd;           /* a file part's descriptor (dup()ed at the call, or opened from path), or -1 */
  int mem;
  int cached;       /* fd belongs to the descriptor cache's slot `slot`, not to the job */
  uint64_t slot;
} seg;

typedef struct job {
  int sock;
  seg *segs;
  int nsegs, cur;
  int64_t done; /* bytes of segs[cur] sent */
  char *arena;
  size_t mapped;   /* the arena is its own mmap of this many bytes (its pages may be vmspliced) */
  int pipe[2];     /* parts of a many-part body meet in a pipe, spliced to the socket in big pieces */
  int64_t inpipe;  /* bytes in the pipe */
  int nopipe;
  int64_t sent, idle_ms, deadline;
  int err, ready;
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
static int64_t rate;                         /* bytes per second, 0: no cap (atomic) */
static int64_t stat_bytes, stat_throttled, stat_active; /* atomic */
static double tokens;                        /* the sender thread's only */
static int64_t refilled_ms;

static int64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void done_part(seg *s);

static void free_job(job *j) {
  for (int i = 0; i < j->nsegs; i++) {
    done_part(&j->segs[i]);
    free(j->segs[i].path);
  }
  if (j->pipe[0] >= 0) { close(j->pipe[0]); close(j->pipe[1]); }
  free(j->segs);
  if (j->mapped) munmap(j->arena, j->mapped); /* pages still queued in a socket live on until sent */
  else free(j->arena);
}

static void cork(int sock, int on) {
  setsockopt(sock, IPPROTO_TCP, TCP_CORK, &on, sizeof on); /* not TCP (a test's socketpair): no matter */
}

static void finish(job *j, int err) {
  cork(j->sock, 0); /* what is held goes out now */
  epoll_ctl(ep, EPOLL_CTL_DEL, j->sock, NULL);
  close(j->sock);
  free_job(j);
  if (j->prev) j->prev->next = j->next; else active = j->next;
  if (j->next) j->next->prev = j->prev;
  j->err = err;
  __atomic_sub_fetch(&stat_active, 1, __ATOMIC_RELAXED);
  napi_call_threadsafe_function(tsfn, j, napi_tsfn_blocking);
}

/*
 * Descriptors of part files, kept open (the sender thread's only): a storm of endpoints asks for the
 * same chunk files over and over, and an open + fstat + close of each costs more than sending it.
 * Direct-mapped by a hash of the path; sized from RLIMIT_NOFILE. Chunk files never change (a changed
 * size is ESTALE); sendForget() empties it when the store drops or quarantines files.
 */
typedef struct fdc_slot {
  uint64_t h;
  char *path;
  int fd;
  int64_t size;
  int users;  /* parts being sent from it: its descriptor is closed only when none is */
  int doomed; /* forgotten while in use: closed when the last user is done */
} fdc_slot;
static fdc_slot *fdc;
static uint64_t fdc_mask;
static uint64_t forget_gen, forgot_gen; /* bumped by sendForget (atomic); the sender's copy */

static uint64_t fnv1a(const char *p) {
  uint64_t h = 1469598103934665603ull;
  while (*p) { h ^= (unsigned char)*p++; h *= 1099511628211ull; }
  return h;
}

static void fdc_init(void) {
  struct rlimit rl;
  uint64_t want = 4096;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) want = rl.rlim_cur / 4;
  uint64_t n = 64;
  while (n * 2 <= want && n < 16384) n *= 2;
  fdc = calloc(n, sizeof *fdc);
  if (!fdc) return; /* no cache: every part is opened and closed */
  for (uint64_t i = 0; i < n; i++) fdc[i].fd = -1;
  fdc_mask = n - 1;
}

static void fdc_drop(fdc_slot *c) {
  if (c->fd >= 0) close(c->fd);
  free(c->path);
  c->fd = -1;
  c->path = NULL;
  c->doomed = 0;
}

static void fdc_clear(void) {
  if (!fdc) return;
  for (uint64_t i = 0; i <= fdc_mask; i++) {
    if (fdc[i].fd < 0) continue;
    if (fdc[i].users) fdc[i].doomed = 1;
    else fdc_drop(&fdc[i]);
  }
}

/* Opens a file part when its turn comes (from the cache if it can); 0 or an errno. */
static int open_part(seg *s) {
  uint64_t h = fnv1a(s->path);
  fdc_slot *c = fdc ? &fdc[h & fdc_mask] : NULL;
  struct stat st;
  /* a hit is checked against the file as it is now: one replaced in place (an admin's repair) is read anew */
  if (c && c->fd >= 0 && !c->doomed && c->h == h && strcmp(c->path, s->path) == 0 && fstat(c->fd, &st) == 0 && st.st_size == c->size && st.st_nlink > 0) {
    if (c->size != s->off + s->len) return ESTALE;
    c->users++;
    s->fd = c->fd;
    s->cached = 1;
    s->slot = h & fdc_mask;
    return 0;
  }
  /* no atime update per read of an immutable chunk (EPERM unless we own the file: then plainly) */
  int fd = open(s->path, O_RDONLY | O_CLOEXEC | O_NOATIME);
  if (fd < 0 && errno == EPERM) fd = open(s->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0 && (errno == EMFILE || errno == ENFILE)) { fdc_clear(); fd = open(s->path, O_RDONLY | O_CLOEXEC); }
  if (fd < 0) return errno;
  if (fstat(fd, &st) < 0) { int err = errno; close(fd); return err; }
  s->fd = fd; /* the job's own until the cache takes it */
  if (st.st_size != s->off + s->len) return ESTALE;
  if (c && (c->fd < 0 || c->users == 0)) {
    char *copy = strdup(s->path);
    if (copy) {
      fdc_drop(c);
      c->h = h;
      c->path = copy;
      c->fd = fd;
      c->size = st.st_size;
      c->users = 1;
      s->cached = 1;
      s->slot = h & fdc_mask;
    }
  }
  return 0;
}

/* A part is done (or its job ended): its descriptor back to the cache, or closed. */
static void done_part(seg *s) {
  if (s->fd < 0) return;
  if (s->cached) {
    fdc_slot *c = &fdc[s->slot];
    if (--c->users == 0 && c->doomed) fdc_drop(c);
  } else {
    close(s->fd);
  }
  s->fd = -1;
  s->cached = 0;
}

/* When the current part is all sent: its file let go, the next part's turn (1). */
static int part_done(job *j, seg *s) {
  if (j->done != s->len) return 0;
  done_part(s);
  j->cur++;
  j->done = 0;
  return 1;
}

/* The part's file, opened when its turn comes; 0, or the job is finished with the error. */
static int ready_part(job *j, seg *s) {
  if (s->fd >= 0) return 0;
  int err = open_part(s);
  if (err) finish(j, err);
  return err;
}

/*
 * Send up to `budget` bytes: stops when the job is done (finished), the socket is full (EAGAIN: wait
 * for EPOLLOUT; ready = 0) or the budget is spent (ready = 1: another turn). Returns the bytes sent.
 * Each part straight to the socket (one file: sendfile; a pipe could not be made).
 */
static int64_t pump_direct(job *j, int64_t budget) {
  int64_t spent = 0;
  while (j->cur < j->nsegs) {
    seg *s = &j->segs[j->cur];
    if (part_done(j, s)) continue;
    if (spent >= budget) { j->ready = 1; return spent; }
    int64_t want = s->len - j->done;
    if (want > budget - spent) want = budget - spent;
    ssize_t r;
    if (s->mem) {
      r = send(j->sock, j->arena + s->off + j->done, (size_t)want, MSG_DONTWAIT | MSG_NOSIGNAL);
    } else {
      if (ready_part(j, s)) return spent;
      off_t o = (off_t)(s->off + j->done);
      r = sendfile(j->sock, s->fd, &o, (size_t)want);
      if (r == 0) { finish(j, ENODATA); return spent; }
    }
    if (r > 0) {
      j->done += r;
      j->sent += r;
      __atomic_add_fetch(&stat_bytes, r, __ATOMIC_RELAXED); /* before finish() can call back */
      spent += r;
      j->deadline = now_ms() + j->idle_ms;
    } else if (errno == EAGAIN) {
      j->ready = 0;
      return spent;
    } else if (errno != EINTR) {
      finish(j, errno);
      return spent;
    }
  }
  finish(j, 0);
  return spent;
}

/*
 * A body of many parts (a pack: a 40-byte record head, then a ~64 KiB frame, thousands of times):
 * the parts are gathered in a pipe (heads written, frames spliced from the page cache) and the pipe
 * spliced to the socket up to 1 MiB at a time, so the socket sees a few large sends, as for one file.
 */
static int64_t pump_pipe(job *j, int64_t budget) {
  int64_t spent = 0;
  for (;;) {
    if (j->inpipe > 0) {
      if (spent >= budget) { j->ready = 1; return spent; }
      int64_t want = j->inpipe < budget - spent ? j->inpipe : budget - spent;
      ssize_t r = splice(j->pipe[0], NULL, j->sock, NULL, (size_t)want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (r > 0) {
        j->inpipe -= r;
        j->sent += r;
        __atomic_add_fetch(&stat_bytes, r, __ATOMIC_RELAXED); /* before finish() can call back */
        spent += r;
        j->deadline = now_ms() + j->idle_ms;
        continue;
      }
      if (r < 0 && errno == EAGAIN) { j->ready = 0; return spent; }
      if (r < 0 && errno == EINTR) continue;
      finish(j, r == 0 ? EPIPE : errno);
      return spent;
    }
    if (j->cur == j->nsegs) { finish(j, 0); return spent; }
    while (j->cur < j->nsegs) { /* fill the pipe */
      seg *s = &j->segs[j->cur];
      if (part_done(j, s)) continue;
      ssize_t r;
      if (s->mem && j->mapped) {
        /* a record head joins the pipe by reference: no page allocated and copied per 40 bytes */
        struct iovec v = { j->arena + s->off + j->done, (size_t)(s->len - j->done) };
        r = vmsplice(j->pipe[1], &v, 1, SPLICE_F_NONBLOCK);
      } else if (s->mem) {
        r = write(j->pipe[1], j->arena + s->off + j->done, (size_t)(s->len - j->done));
      } else {
        if (ready_part(j, s)) return spent;
        loff_t o = (loff_t)(s->off + j->done);
        r = splice(s->fd, &o, j->pipe[1], NULL, (size_t)(s->len - j->done), SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (r == 0) { finish(j, ENODATA); return spent; }
      }
      if (r > 0) { j->done += r; j->inpipe += r; continue; }
      if (errno == EAGAIN) break; /* the pipe is full: drain it */
      if (errno == EINTR) continue;
      finish(j, errno);
      return spent;
    }
  }
}

static int64_t pump(job *j, int64_t budget) {
  if (j->nsegs > 1 && j->pipe[0] < 0 && !j->nopipe) {
    if (pipe2(j->pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
      j->pipe[0] = j->pipe[1] = -1;
      j->nopipe = 1;
    } else {
      fcntl(j->pipe[1], F_SETPIPE_SZ, 1 << 20); /* at most fs.pipe-max-size; the default 64 KiB works too */
    }
  }
  return j->pipe[0] >= 0 ? pump_pipe(j, budget) : pump_direct(j, budget);
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
  job *tail = active;
  while (tail && tail->next) tail = tail->next;
  while (fifo) { /* appended: turns go in arrival order */
    job *j = fifo;
    fifo = j->queued;
    j->next = NULL;
    j->prev = tail;
    if (tail) tail->next = j; else active = j;
    tail = j;
    j->deadline = now_ms() + j->idle_ms;
    j->ready = 1;
    /* Full segments only while the body goes out (nginx's tcp_nopush): a record head and its frame
       share segments instead of a frame's last bytes going alone. */
    cork(j->sock, 1);
    struct epoll_event e = { .events = EPOLLOUT | EPOLLET, .data.ptr = j };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, j->sock, &e) < 0) finish(j, errno);
  }
}

/* The bucket holds at most 100 ms of the rate (at least one turn). */
static void refill(int64_t now, int64_t r) {
  double cap = r / 10.0 > QUANTUM ? r / 10.0 : QUANTUM;
  tokens += (double)(now - refilled_ms) * (double)r / 1000.0;
  if (tokens > cap) tokens = cap;
  refilled_ms = now;
}

/* One turn for every job that can send; returns 1 when some job still can (and tokens allow). */
static int turns(void) {
  int64_t r = __atomic_load_n(&rate, __ATOMIC_RELAXED);
  int64_t now = now_ms();
  if (r > 0) refill(now, r);
  int again = 0;
  for (job *j = active, *next; j; j = next) {
    next = j->next;
    if (!j->ready) continue;
    int64_t budget = QUANTUM;
    if (r > 0) {
      if (tokens < 1) { again = 1; continue; }
      if (budget > (int64_t)tokens) budget = (int64_t)tokens;
    }
    int64_t sent = pump(j, budget); /* may finish (free) j: next was saved */
    if (r > 0) tokens -= (double)sent;
    again = 1;
  }
  return again;
}

static void *sender(void *arg) {
  pthread_setname_np(pthread_self(), "df-sender"); /* per-thread CPU in /proc/PID/task (bench/storm.mjs) */
  struct epoll_event ev[64];
  int busy = 0;
  int64_t checked = now_ms();
  refilled_ms = checked;
  for (;;) {
    int timeout = 1000;
    if (busy) {
      int64_t r = __atomic_load_n(&rate, __ATOMIC_RELAXED);
      double want = r > 0 ? (r / 100.0 < QUANTUM ? r / 100.0 + 1 : QUANTUM) : 0; /* wake for ~10 ms of the rate */
      timeout = 0;
      if (r > 0 && tokens < want) {
        timeout = (int)((want - tokens) * 1000 / (double)r) + 1;
        __atomic_add_fetch(&stat_throttled, 1, __ATOMIC_RELAXED);
      }
    }
    int n = epoll_wait(ep, ev, 64, timeout);
    for (int i = 0; i < n; i++) {
      if (ev[i].data.ptr == NULL) take_submitted();
      else ((job *)ev[i].data.ptr)->ready = 1;
    }
    uint64_t g = __atomic_load_n(&forget_gen, __ATOMIC_ACQUIRE);
    if (g != forgot_gen) { forgot_gen = g; fdc_clear(); }
    busy = turns();
    int64_t now = now_ms();
    if (now - checked >= 100) {
      checked = now;
      /* a job waiting for the bucket is not the reader's fault */
      for (job *j = active, *next; j; j = next) {
        next = j->next;
        if (j->ready) j->deadline = now + j->idle_ms;
        else if (j->deadline <= now) finish(j, ETIMEDOUT);
      }
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

static napi_value usage(napi_env env, const char *msg) {
  napi_throw_type_error(env, "DF_ERR_NATIVE", msg);
  return NULL;
}

/* The sender thread, its epoll set and wake-up eventfd, made on first use. */
static int start(napi_env env) {
  if (ep >= 0) return env == owner ? 0 : EPERM;
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
  fdc_init();
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

/* A job for `sock` (dup()ed; it must be nonblocking), its parts already filled; hands it to the sender. */
static napi_value submit(napi_env env, job *j, int64_t sock, int64_t idle, napi_value cb) {
  int err = start(env);
  if (err) { free_job(j); free(j); return fail(env, err, "sendfile (the sender thread)"); }
  j->sock = fcntl((int)sock, F_DUPFD_CLOEXEC, 0);
  if (j->sock < 0) { err = errno; free_job(j); free(j); return fail(env, err, "sendfile (dup of the socket)"); }
  /* O_NONBLOCK belongs to the socket's open file, shared with Node's descriptor: it is set already */
  int fl = fcntl(j->sock, F_GETFL);
  if (fl < 0 || !(fl & O_NONBLOCK)) {
    close(j->sock); free_job(j); free(j);
    return fail(env, EINVAL, "sendfile (the socket is blocking)");
  }
  j->idle_ms = idle;
  napi_create_reference(env, cb, 1, &j->cb);
  __atomic_add_fetch(&stat_active, 1, __ATOMIC_RELAXED);
  pthread_mutex_lock(&mu);
  j->queued = submitted;
  submitted = j;
  pthread_mutex_unlock(&mu);
  uint64_t one = 1;
  if (write(wake, &one, sizeof one) < 0 && errno != EAGAIN) { /* the counter is full: the sender is awake anyway */ }
  return NULL;
}

static int is_fn(napi_env env, napi_value v) {
  napi_valuetype t;
  return napi_typeof(env, v, &t) == napi_ok && t == napi_function;
}

napi_value df_sendfile(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  int64_t sock, file, off, len, idle;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 6) {
    return usage(env, "sendfile(sockFd, fileFd, offset, length, idleMs, cb)");
  }
  if (napi_get_value_int64(env, argv[0], &sock) != napi_ok || napi_get_value_int64(env, argv[1], &file) != napi_ok ||
      napi_get_value_int64(env, argv[2], &off) != napi_ok || napi_get_value_int64(env, argv[3], &len) != napi_ok ||
      napi_get_value_int64(env, argv[4], &idle) != napi_ok || !is_fn(env, argv[5]) ||
      sock < 0 || file < 0 || off < 0 || len < 0 || idle <= 0) {
    return usage(env, "sendfile: fds, offset and length must be numbers >= 0, idleMs > 0, cb a function");
  }
  job *j = calloc(1, sizeof *j);
  seg *s = calloc(1, sizeof *s);
  if (!j || !s) { free(j); free(s); return fail(env, ENOMEM, "sendfile"); }
  j->segs = s;
  j->nsegs = 1;
  j->pipe[0] = j->pipe[1] = -1;
  s->off = off;
  s->len = len;
  s->fd = fcntl((int)file, F_DUPFD_CLOEXEC, 0);
  if (s->fd < 0) { int err = errno; free_job(j); free(j); return fail(env, err, "sendfile (dup of the file)"); }
  return submit(env, j, sock, idle, argv[5]);
}

napi_value df_send_parts(napi_env env, napi_callback_info info) {
  static const char *use = "sendParts(sockFd, parts: Array<Buffer | [path, size]>, idleMs, cb)";
  size_t argc = 4;
  napi_value argv[4];
  int64_t sock, idle;
  uint32_t n;
  bool arr;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 ||
      napi_get_value_int64(env, argv[0], &sock) != napi_ok || napi_get_value_int64(env, argv[2], &idle) != napi_ok ||
      napi_is_array(env, argv[1], &arr) != napi_ok || !arr || napi_get_array_length(env, argv[1], &n) != napi_ok ||
      !is_fn(env, argv[3]) || sock < 0 || idle <= 0 || n == 0 || n > 1 << 20) {
    return usage(env, use);
  }
  job *j = calloc(1, sizeof *j);
  if (!j) return fail(env, ENOMEM, "sendParts");
  j->segs = calloc(n, sizeof *j->segs);
  if (!j->segs) { free(j); return fail(env, ENOMEM, "sendParts"); }
  j->nsegs = (int)n;
  j->pipe[0] = j->pipe[1] = -1;
  for (uint32_t i = 0; i < n; i++) j->segs[i].fd = -1;
  for (int copy = 0; copy < 2; copy++) { /* two passes: sizes, then copies */
    int64_t at = 0;
    for (uint32_t i = 0; i < n; i++) {
      napi_value p;
      bool isbuf = false, ispair = false;
      napi_get_element(env, argv[1], i, &p);
      napi_is_buffer(env, p, &isbuf);
      if (!isbuf) napi_is_array(env, p, &ispair);
      seg *s = &j->segs[i];
      if (isbuf) {
        void *data;
        size_t len;
        napi_get_buffer_info(env, p, &data, &len);
        if (copy) { memcpy(j->arena + at, data, len); s->mem = 1; s->off = at; s->len = (int64_t)len; }
        at += (int64_t)len;
      } else if (ispair) {
        if (copy) continue;
        napi_value pv, sv;
        size_t plen;
        int64_t size;
        napi_valuetype pt;
        if (napi_get_element(env, p, 0, &pv) != napi_ok || napi_typeof(env, pv, &pt) != napi_ok || pt != napi_string ||
            napi_get_element(env, p, 1, &sv) != napi_ok || napi_get_value_int64(env, sv, &size) != napi_ok || size < 0 ||
            napi_get_value_string_utf8(env, pv, NULL, 0, &plen) != napi_ok || plen == 0 || plen > 4096) {
          free_job(j); free(j);
          return usage(env, use);
        }
        s->path = malloc(plen + 1);
        if (!s->path) { free_job(j); free(j); return fail(env, ENOMEM, "sendParts"); }
        napi_get_value_string_utf8(env, pv, s->path, plen + 1, &plen);
        s->off = 0;
        s->len = size;
      } else {
        free_job(j); free(j);
        return usage(env, use);
      }
    }
    if (!copy) {
      j->arena = malloc(at ? (size_t)at : 1);
      if (!j->arena) { free_job(j); free(j); return fail(env, ENOMEM, "sendParts"); }
    }
  }
  return submit(env, j, sock, idle, argv[3]);
}

napi_value df_send_rate(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int64_t r;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int64(env, argv[0], &r) != napi_ok || r < 0) {
    return usage(env, "sendRate(bytesPerSecond >= 0; 0: no cap)");
  }
  __atomic_store_n(&rate, r, __ATOMIC_RELAXED);
  if (ep >= 0) { /* wake the sender: jobs waiting for the bucket see the new rate at once */
    uint64_t one = 1;
    if (write(wake, &one, sizeof one) < 0 && errno != EAGAIN) {}
  }
  return NULL;
}

napi_value df_send_stats(napi_env env, napi_callback_info info) {
  napi_value o, v;
  napi_create_object(env, &o);
  napi_create_double(env, (double)__atomic_load_n(&stat_active, __ATOMIC_RELAXED), &v);
  napi_set_named_property(env, o, "active", v);
  napi_create_double(env, (double)__atomic_load_n(&stat_bytes, __ATOMIC_RELAXED), &v);
  napi_set_named_property(env, o, "bytes", v);
  napi_create_double(env, (double)__atomic_load_n(&stat_throttled, __ATOMIC_RELAXED), &v);
  napi_set_named_property(env, o, "throttled", v);
  napi_create_double(env, (double)__atomic_load_n(&rate, __ATOMIC_RELAXED), &v);
  napi_set_named_property(env, o, "rate", v);
  return o;
}

napi_value df_send_forget(napi_env env, napi_callback_info info) {
  __atomic_add_fetch(&forget_gen, 1, __ATOMIC_RELEASE);
  if (ep >= 0) { /* the sender empties its descriptor cache at its next turn */
    uint64_t one = 1;
    if (write(wake, &one, sizeof one) < 0 && errno != EAGAIN) {}
  }
  return NULL;
}

/*
 * sendPack(sockFd, meta, root, idleMs, cb): a pack body (src/chunk/pack.ts) whose frames are the
 * files of a local chunk store (src/chunk/fs-store.ts: <root>/<id[0..3]>/<id>.zst). `meta` is the
 * pack without its frames: the 8-byte header, one 40-byte record head per chunk (id, raw length,
 * frame length) and the 36-byte trailer; each head names its file and that file's size. One buffer
 * and one string cross from JavaScript, whatever the number of chunks.
 */
napi_value df_send_pack(napi_env env, napi_callback_info info) {
  static const char *use = "sendPack(sockFd, meta: Buffer (header, record heads, trailer), root, idleMs, cb)";
  static const char hex[] = "0123456789abcdef";
  size_t argc = 5;
  napi_value argv[5];
  int64_t sock, idle;
  bool isbuf = false;
  void *data;
  size_t len, rootlen;
  char root[4096];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5 ||
      napi_get_value_int64(env, argv[0], &sock) != napi_ok || napi_is_buffer(env, argv[1], &isbuf) != napi_ok || !isbuf ||
      napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok ||
      napi_get_value_string_utf8(env, argv[2], root, sizeof root - 80, &rootlen) != napi_ok || rootlen == 0 || rootlen >= sizeof root - 81 ||
      napi_get_value_int64(env, argv[3], &idle) != napi_ok || !is_fn(env, argv[4]) || sock < 0 || idle <= 0 ||
      len < 44 || (len - 44) % 40 != 0 || memcmp(data, "DFPK", 4) != 0) {
    return usage(env, use);
  }
  const unsigned char *m = data;
  size_t n = (len - 44) / 40;
  job *j = calloc(1, sizeof *j);
  if (!j) return fail(env, ENOMEM, "sendPack");
  j->segs = calloc(2 * n + 1, sizeof *j->segs);
  /* Pages of its own, never written after this copy and unmapped at the end, so they can be
     vmspliced: a socket holding references to them until sent always sends these bytes. */
  void *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (!j->segs || a == MAP_FAILED) { free(j->segs); if (a != MAP_FAILED) munmap(a, len); free(j); return fail(env, ENOMEM, "sendPack"); }
  j->arena = a;
  j->mapped = len;
  memcpy(j->arena, data, len);
  j->nsegs = (int)(2 * n + 1);
  j->pipe[0] = j->pipe[1] = -1;
  for (int i = 0; i < j->nsegs; i++) j->segs[i].fd = -1;
  int64_t from = 0;
  for (size_t k = 0; k < n; k++) {
    const unsigned char *h = m + 8 + 40 * k;
    seg *mem = &j->segs[2 * k], *file = &j->segs[2 * k + 1];
    mem->mem = 1;
    mem->off = from;
    mem->len = (int64_t)(8 + 40 * (k + 1)) - from;
    from = (int64_t)(8 + 40 * (k + 1));
    file->len = ((int64_t)h[36] << 24) | ((int64_t)h[37] << 16) | ((int64_t)h[38] << 8) | h[39];
    file->path = malloc(rootlen + 80);
    if (!file->path) { free_job(j); free(j); return fail(env, ENOMEM, "sendPack"); }
    char *p = file->path;
    memcpy(p, root, rootlen);
    p += rootlen;
    *p++ = '/';
    for (int b = 0; b < 32; b++) { p[3 + 1 + 2 * b] = hex[h[b] >> 4]; p[3 + 1 + 2 * b + 1] = hex[h[b] & 15]; }
    memcpy(p, p + 4, 3); /* the fan-out folder: the id's first three hex digits */
    p[3] = '/';
    memcpy(p + 4 + 64, ".zst", 5);
  }
  seg *last = &j->segs[2 * n];
  last->mem = 1;
  last->off = from;
  last->len = (int64_t)len - from;
  return submit(env, j, sock, idle, argv[4]);
}
