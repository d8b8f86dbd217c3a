/*
 * deskfuse_native: the few socket and file calls Node cannot make.
 *
 *   udpSocket(ifname, port, {broadcast, reuseAddr, rcvbuf?}) -> fd   UDPv4 bound to 0.0.0.0:port and to the
 *        device (SO_BINDTODEVICE), nonblocking; hand the fd to dgram's bind({fd}). Node's dgram has
 *        no SO_BINDTODEVICE, so on a multi-NIC server it could not tell (or choose) the boot LAN.
 *        rcvbuf: receive buffer bytes, forced past net.core.rmem_max when the process may
 *        (SO_RCVBUFFORCE), else as much as the kernel grants.
 *   ifIndex(ifname) -> number
 *   icmp6Socket(ifname, types?) -> fd   raw ICMPv6, bound to the device, member of ff02::2 (all-routers,
 *        so Router Solicitations arrive), hop limit 255 (RFC 4861 §6.1.2 drops anything else), passing
 *        only the ICMPv6 types listed (default [133], RS), SO_RCVTIMEO 1 s so a thread-pool read
 *        wakes up regularly and can be stopped.
 *   icmp6Recv(fd) -> {data: Buffer, from: string} | null (null on timeout)   blocking: call it off
 *        the main thread, or on a socket known to be readable.
 *   icmp6Send(fd, ifindex, dest, buf)   sendto dest (e.g. ff02::1) scoped to ifindex.
 *   seekData(fd, offset) / seekHole(fd, offset) -> offset, or -1 at ENXIO (past the last data).
 *   close(fd)
 *   sendfile(sockFd, fileFd, offset, length, idleMs, cb(err, sent))   zero-copy file -> socket, off the
 *        main thread (native/sendfile.c); sendParts(sockFd, parts, idleMs, cb) a body of buffers and
 *        whole files; sendRate(bytesPerSecond) the sender's token bucket; sendStats(); sendForget(); sendPack(sockFd, meta, root, idleMs, cb) a pack from a chunk store's files.
 *   fingerprint(data, out, at)   XXH3-128 of data into out[at, at+16) (native/fingerprint.c): the scan's change test.
 *   fingerprintFile(fd, start, chunkSize, count, lastLength, holes, out, outAt, cb)   the same for chunks of a file, on the thread pool.
 *   mallocTune(mmapThreshold, arenaMax) -> bool   glibc mallopt (native/fingerprint.c): the agent's memory.
 *
 * Errors become JS exceptions with .code (errno name), .errno and .syscall, like Node's own.
 */
#define _GNU_SOURCE
#include <node_api.h>
#include "deskfuse_native.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define CHECK(call) do { if ((call) != napi_ok) return throw_msg(env, "napi call failed: " #call); } while (0)

static napi_value throw_msg(napi_env env, const char *msg) {
  napi_throw_error(env, "DF_ERR_NATIVE", msg);
  return NULL;
}

/* An Error carrying errno/code/syscall, as Node's uvException makes. */
napi_value df_errno_error(napi_env env, int err, const char *syscall, const char *detail) {
  char msg[256];
  const char *name = strerrorname_np(err);
  snprintf(msg, sizeof msg, "%s %s%s%s: %s", syscall, name ? name : "E?", detail ? " " : "", detail ? detail : "", strerror(err));
  napi_value m, e, v;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, NULL, m, &e);
  napi_create_int32(env, -err, &v);
  napi_set_named_property(env, e, "errno", v);
  napi_create_string_utf8(env, name ? name : "EUNKNOWN", NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, e, "code", v);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, e, "syscall", v);
  return e;
}

static napi_value throw_errno(napi_env env, int err, const char *syscall, const char *detail) {
  napi_throw(env, df_errno_error(env, err, syscall, detail));
  return NULL;
}

static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
    napi_throw_type_error(env, "DF_ERR_NATIVE", "too few arguments");
    return 0;
  }
  return 1;
}

static int get_str(napi_env env, napi_value v, char *buf, size_t size, const char *what) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, buf, size, &len) != napi_ok) {
    napi_throw_type_error(env, "DF_ERR_NATIVE", what);
    return 0;
  }
  return 1;
}

static int get_i64(napi_env env, napi_value v, int64_t *out, const char *what) {
  if (napi_get_value_int64(env, v, out) != napi_ok) {
    napi_throw_type_error(env, "DF_ERR_NATIVE", what);
    return 0;
  }
  return 1;
}

static int get_bool_prop(napi_env env, napi_value obj, const char *name, int dflt) {
  napi_valuetype t;
  napi_value v;
  bool b;
  if (napi_typeof(env, obj, &t) != napi_ok || t != napi_object) return dflt;
  if (napi_get_named_property(env, obj, name, &v) != napi_ok) return dflt;
  if (napi_get_value_bool(env, v, &b) != napi_ok) return dflt;
  return b;
}

static int64_t get_int_prop(napi_env env, napi_value obj, const char *name, int64_t dflt) {
  napi_valuetype t;
  napi_value v;
  int64_t n;
  if (napi_typeof(env, obj, &t) != napi_ok || t != napi_object) return dflt;
  if (napi_get_named_property(env, obj, name, &v) != napi_ok) return dflt;
  if (napi_get_value_int64(env, v, &n) != napi_ok) return dflt;
  return n;
}

static napi_value num(napi_env env, double d) {
  napi_value v;
  napi_create_double(env, d, &v);
  return v;
}

static napi_value udp_socket(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  char ifname[IFNAMSIZ];
  int64_t port;
  if (!get_args(env, info, 3, argv)) return NULL;
  if (!get_str(env, argv[0], ifname, sizeof ifname, "ifname must be a string")) return NULL;
  if (!get_i64(env, argv[1], &port, "port must be a number")) return NULL;
  if (port < 0 || port > 65535) return throw_msg(env, "port out of range");
  int one = 1;
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket", NULL);
  if (get_bool_prop(env, argv[2], "reuseAddr", 1) && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) goto fail_opt;
  if (get_bool_prop(env, argv[2], "broadcast", 1) && setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one) < 0) goto fail_opt;
  int64_t rcvbuf = get_int_prop(env, argv[2], "rcvbuf", 0);
  if (rcvbuf > 0 && rcvbuf <= 1 << 30) {
    /* past net.core.rmem_max when we may (CAP_NET_ADMIN: a DHCP server binds port 67 as root anyway) */
    int b = (int)rcvbuf;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &b, sizeof b) < 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &b, sizeof b);
  }
  if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname, strlen(ifname) + 1) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, e, "setsockopt", ifname);
  }
  struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY) };
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, e, "bind", ifname);
  }
  return num(env, fd);
fail_opt: {
    int e = errno;
    close(fd);
    return throw_errno(env, e, "setsockopt", NULL);
  }
}

static napi_value if_index(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  char ifname[IFNAMSIZ];
  if (!get_args(env, info, 1, argv)) return NULL;
  if (!get_str(env, argv[0], ifname, sizeof ifname, "ifname must be a string")) return NULL;
  unsigned idx = if_nametoindex(ifname);
  if (idx == 0) return throw_errno(env, errno, "if_nametoindex", ifname);
  return num(env, idx);
}

static napi_value icmp6_socket(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  char ifname[IFNAMSIZ];
  size_t argc = 2;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) return throw_msg(env, "too few arguments");
  if (!get_str(env, argv[0], ifname, sizeof ifname, "ifname must be a string")) return NULL;
  unsigned idx = if_nametoindex(ifname);
  if (idx == 0) return throw_errno(env, errno, "if_nametoindex", ifname);
  int fd = socket(AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMPV6);
  if (fd < 0) return throw_errno(env, errno, "socket", NULL);
  const char *what = "setsockopt";
  int hops = 255, off = 0;
  struct timeval tv = { .tv_sec = 1, .tv_usec = 0 };
  struct icmp6_filter filt;
  ICMP6_FILTER_SETBLOCKALL(&filt);
  bool is_array = false;
  if (argc >= 2) napi_is_array(env, argv[1], &is_array);
  if (is_array) {
    uint32_t n = 0;
    napi_get_array_length(env, argv[1], &n);
    for (uint32_t i = 0; i < n; i++) {
      napi_value el;
      int32_t t;
      if (napi_get_element(env, argv[1], i, &el) != napi_ok || napi_get_value_int32(env, el, &t) != napi_ok || t < 0 || t > 255) {
        close(fd);
        return throw_msg(env, "types must be ICMPv6 type numbers");
      }
      ICMP6_FILTER_SETPASS(t, &filt);
    }
  } else {
    ICMP6_FILTER_SETPASS(ND_ROUTER_SOLICIT, &filt);
  }
  struct ipv6_mreq mr = { .ipv6mr_interface = idx };
  inet_pton(AF_INET6, "ff02::2", &mr.ipv6mr_multiaddr);
  if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname, strlen(ifname) + 1) < 0) goto fail;
  if (setsockopt(fd, IPPROTO_ICMPV6, ICMP6_FILTER, &filt, sizeof filt) < 0) goto fail;
  if (setsockopt(fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, &hops, sizeof hops) < 0) goto fail;
  if (setsockopt(fd, IPPROTO_IPV6, IPV6_UNICAST_HOPS, &hops, sizeof hops) < 0) goto fail;
  if (setsockopt(fd, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, &off, sizeof off) < 0) goto fail;
  if (setsockopt(fd, IPPROTO_IPV6, IPV6_MULTICAST_IF, &idx, sizeof idx) < 0) goto fail;
  if (setsockopt(fd, IPPROTO_IPV6, IPV6_ADD_MEMBERSHIP, &mr, sizeof mr) < 0) goto fail;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) goto fail;
  return num(env, fd);
fail: {
    int e = errno;
    close(fd);
    return throw_errno(env, e, what, ifname);
  }
}

static napi_value icmp6_recv(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t fd;
  if (!get_args(env, info, 1, argv)) return NULL;
  if (!get_i64(env, argv[0], &fd, "fd must be a number")) return NULL;
  unsigned char buf[1500];
  struct sockaddr_in6 from;
  socklen_t fl = sizeof from;
  ssize_t n = recvfrom((int)fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      napi_value nul;
      napi_get_null(env, &nul);
      return nul;
    }
    return throw_errno(env, errno, "recvfrom", NULL);
  }
  char addr[INET6_ADDRSTRLEN + 1] = "";
  inet_ntop(AF_INET6, &from.sin6_addr, addr, sizeof addr);
  napi_value out, data, fromv;
  void *dst;
  CHECK(napi_create_object(env, &out));
  CHECK(napi_create_buffer_copy(env, (size_t)n, buf, &dst, &data));
  CHECK(napi_create_string_utf8(env, addr, NAPI_AUTO_LENGTH, &fromv));
  napi_set_named_property(env, out, "data", data);
  napi_set_named_property(env, out, "from", fromv);
  return out;
}

static napi_value icmp6_send(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int64_t fd, idx;
  char dest[INET6_ADDRSTRLEN + 1];
  void *data;
  size_t len;
  if (!get_args(env, info, 4, argv)) return NULL;
  if (!get_i64(env, argv[0], &fd, "fd must be a number")) return NULL;
  if (!get_i64(env, argv[1], &idx, "ifindex must be a number")) return NULL;
  if (!get_str(env, argv[2], dest, sizeof dest, "dest must be a string")) return NULL;
  if (napi_get_buffer_info(env, argv[3], &data, &len) != napi_ok) {
    napi_throw_type_error(env, "DF_ERR_NATIVE", "data must be a Buffer");
    return NULL;
  }
  struct sockaddr_in6 to = { .sin6_family = AF_INET6, .sin6_scope_id = (uint32_t)idx };
  if (inet_pton(AF_INET6, dest, &to.sin6_addr) != 1) return throw_msg(env, "dest is not an IPv6 address");
  ssize_t n = sendto((int)fd, data, len, 0, (struct sockaddr *)&to, sizeof to);
  if (n < 0) return throw_errno(env, errno, "sendto", dest);
  return num(env, (double)n);
}

static napi_value seek(napi_env env, napi_callback_info info, int whence, const char *name) {
  napi_value argv[2];
  int64_t fd, off;
  if (!get_args(env, info, 2, argv)) return NULL;
  if (!get_i64(env, argv[0], &fd, "fd must be a number")) return NULL;
  if (!get_i64(env, argv[1], &off, "offset must be a number")) return NULL;
  off_t r = lseek((int)fd, (off_t)off, whence);
  if (r < 0) {
    if (errno == ENXIO) return num(env, -1);
    return throw_errno(env, errno, name, NULL);
  }
  return num(env, (double)r);
}
static napi_value seek_data(napi_env env, napi_callback_info info) { return seek(env, info, SEEK_DATA, "lseek(SEEK_DATA)"); }
static napi_value seek_hole(napi_env env, napi_callback_info info) { return seek(env, info, SEEK_HOLE, "lseek(SEEK_HOLE)"); }

static napi_value close_fd(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t fd;
  if (!get_args(env, info, 1, argv)) return NULL;
  if (!get_i64(env, argv[0], &fd, "fd must be a number")) return NULL;
  if (close((int)fd) < 0) return throw_errno(env, errno, "close", NULL);
  return NULL;
}

/* dup(fd) with close-on-exec: a second descriptor of the same open socket or file (the NBD server
 * hands a connection's socket to a worker thread, which wraps the copy in a net.Socket of its own). */
static napi_value dup_fd(napi_env env, napi_callback_info info) {
  napi_value argv[1], out;
  int64_t fd;
  if (!get_args(env, info, 1, argv)) return NULL;
  if (!get_i64(env, argv[0], &fd, "fd must be a number")) return NULL;
  int copy = fcntl((int)fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return throw_errno(env, errno, "dup", NULL);
  napi_create_int32(env, copy, &out);
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "udpSocket", NULL, udp_socket, NULL, NULL, NULL, napi_enumerable, NULL },
    { "ifIndex", NULL, if_index, NULL, NULL, NULL, napi_enumerable, NULL },
    { "icmp6Socket", NULL, icmp6_socket, NULL, NULL, NULL, napi_enumerable, NULL },
    { "icmp6Recv", NULL, icmp6_recv, NULL, NULL, NULL, napi_enumerable, NULL },
    { "icmp6Send", NULL, icmp6_send, NULL, NULL, NULL, napi_enumerable, NULL },
    { "seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL },
    { "seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL },
    { "close", NULL, close_fd, NULL, NULL, NULL, napi_enumerable, NULL },
    { "dup", NULL, dup_fd, NULL, NULL, NULL, napi_enumerable, NULL },
    { "sendfile", NULL, df_sendfile, NULL, NULL, NULL, napi_enumerable, NULL },
    { "sendParts", NULL, df_send_parts, NULL, NULL, NULL, napi_enumerable, NULL },
    { "sendRate", NULL, df_send_rate, NULL, NULL, NULL, napi_enumerable, NULL },
    { "sendStats", NULL, df_send_stats, NULL, NULL, NULL, napi_enumerable, NULL },
    { "sendForget", NULL, df_send_forget, NULL, NULL, NULL, napi_enumerable, NULL },
    { "sendPack", NULL, df_send_pack, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fingerprint", NULL, df_fingerprint, NULL, NULL, NULL, napi_enumerable, NULL },
    { "fingerprintFile", NULL, df_fingerprint_file, NULL, NULL, NULL, napi_enumerable, NULL },
    { "mallocTune", NULL, df_malloc_tune, NULL, NULL, NULL, napi_enumerable, NULL },
    { "mallocTrim", NULL, df_malloc_trim, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
