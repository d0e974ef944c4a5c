/*
 * userpci native layer: thin wrappers over the system calls a user-space PCI driver needs.
 * No policy lives here: arguments are checked only as far as needed to call the kernel safely,
 * and every failure becomes a JS Error with code/errno/syscall like Node's own fs errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#define MAX_ARGS 8
#define MAX_FDS 32 /* per message: vfio-user peers advertise far fewer */

/* ---- errors ---------------------------------------------------------------------------- */

static napi_value throw_errno(napi_env env, int err, const char *syscall) {
  const char *name = strerrorname_np(err);
  char message[256];
  snprintf(message, sizeof message, "%s: %s, %s", name ? name : "EUNKNOWN", strerror(err), syscall);
  napi_value code, msg, error, errno_value, syscall_value;
  napi_create_string_utf8(env, name ? name : "EUNKNOWN", NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, code, msg, &error);
  napi_create_int32(env, -err, &errno_value); /* negative, like libuv and Node's fs errors */
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_value);
  napi_set_named_property(env, error, "errno", errno_value);
  napi_set_named_property(env, error, "syscall", syscall_value);
  napi_throw(env, error);
  return NULL;
}

static napi_value throw_type(napi_env env, const char *message) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", message);
  return NULL;
}

/* Capacity is always MAX_ARGS: N-API copies only that many and fills the rest with undefined. */
#define GET_ARGS(n)                                                                   \
  size_t argc = MAX_ARGS;                                                             \
  napi_value argv[MAX_ARGS];                                                          \
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL; \
  if (argc < (size_t)(n)) return throw_type(env, "missing arguments");

static int get_i32(napi_env env, napi_value v, int32_t *out) {
  return napi_get_value_int32(env, v, out) == napi_ok;
}

/* Numbers up to 2^53 carry offsets and lengths; anything else is refused, never truncated. */
static int get_u64(napi_env env, napi_value v, uint64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return 0;
  if (!(d >= 0) || d > 9007199254740991.0 || d != (double)(uint64_t)d) return 0;
  *out = (uint64_t)d;
  return 1;
}

static napi_value make_i32(napi_env env, int32_t v) {
  napi_value r;
  napi_create_int32(env, v, &r);
  return r;
}

static napi_value make_num(napi_env env, double v) {
  napi_value r;
  napi_create_double(env, v, &r);
  return r;
}

static napi_value make_undefined(napi_env env) {
  napi_value r;
  napi_get_undefined(env, &r);
  return r;
}

/* Bytes of a TypedArray, DataView, Buffer or ArrayBuffer. */
static int get_bytes(napi_env env, napi_value v, void **data, size_t *length) {
  bool is;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type type;
    size_t count, offset;
    napi_value ab;
    if (napi_get_typedarray_info(env, v, &type, &count, data, &ab, &offset) != napi_ok) return 0;
    size_t unit = 1;
    switch (type) {
      case napi_int16_array: case napi_uint16_array: unit = 2; break;
      case napi_int32_array: case napi_uint32_array: case napi_float32_array: unit = 4; break;
      case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: unit = 8; break;
      default: unit = 1;
    }
    *length = count * unit;
    return 1;
  }
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    napi_value ab;
    size_t offset;
    return napi_get_dataview_info(env, v, length, data, &ab, &offset) == napi_ok;
  }
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
    return napi_get_arraybuffer_info(env, v, data, length) == napi_ok;
  }
  return 0;
}

/* ---- files and ioctl ------------------------------------------------------------------- */

/* open(path, flags) -> fd; O_CLOEXEC always, so fds never leak into children. */
static napi_value n_open(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  char path[4096];
  size_t len;
  int32_t flags;
  if (napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len) != napi_ok) return throw_type(env, "path must be a string");
  if (!get_i32(env, argv[1], &flags)) return throw_type(env, "flags must be an integer");
  int fd = open(path, flags | O_CLOEXEC);
  if (fd < 0) return throw_errno(env, errno, "open");
  return make_i32(env, fd);
}

static napi_value n_close(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t fd;
  if (!get_i32(env, argv[0], &fd)) return throw_type(env, "fd must be an integer");
  if (close(fd) < 0 && errno != EINTR) return throw_errno(env, errno, "close");
  return make_undefined(env);
}

/*
 * ioctl(fd, request, arg): arg is a buffer (its address is passed: the caller encoded the
 * struct), a number (passed by value), or a string (passed as a NUL-terminated pointer, as
 * VFIO_GROUP_GET_DEVICE_FD wants). Returns the ioctl's non-negative result.
 */
static napi_value n_ioctl(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int32_t fd;
  uint32_t request;
  if (!get_i32(env, argv[0], &fd)) return throw_type(env, "fd must be an integer");
  if (napi_get_value_uint32(env, argv[1], &request) != napi_ok) return throw_type(env, "request must be a number");
  int ret;
  napi_valuetype t = napi_undefined;
  if (argc > 2) napi_typeof(env, argv[2], &t);
  if (t == napi_undefined) {
    ret = ioctl(fd, request, 0UL);
  } else if (t == napi_number) {
    uint64_t value;
    if (!get_u64(env, argv[2], &value)) return throw_type(env, "ioctl argument must be a non-negative integer");
    ret = ioctl(fd, request, (unsigned long)value);
  } else if (t == napi_string) {
    char text[256];
    size_t len;
    napi_get_value_string_utf8(env, argv[2], text, sizeof text, &len);
    ret = ioctl(fd, request, text);
  } else {
    void *data;
    size_t len;
    if (!get_bytes(env, argv[2], &data, &len)) return throw_type(env, "ioctl argument must be a buffer, number or string");
    ret = ioctl(fd, request, data);
  }
  if (ret < 0) return throw_errno(env, errno, "ioctl");
  return make_i32(env, ret);
}

/* pread(fd, view, offset) / pwrite(...) -> bytes moved. Offsets up to 2^53: VFIO region offsets are index<<40. */
static napi_value positioned_io(napi_env env, napi_callback_info info, int write) {
  GET_ARGS(3);
  int32_t fd;
  void *data;
  size_t len;
  uint64_t offset;
  if (!get_i32(env, argv[0], &fd)) return throw_type(env, "fd must be an integer");
  if (!get_bytes(env, argv[1], &data, &len)) return throw_type(env, "buffer must be an ArrayBuffer view");
  if (!get_u64(env, argv[2], &offset)) return throw_type(env, "offset must be a non-negative integer");
  ssize_t n = write ? pwrite(fd, data, len, (off_t)offset) : pread(fd, data, len, (off_t)offset);
  if (n < 0) return throw_errno(env, errno, write ? "pwrite" : "pread");
  return make_num(env, (double)n);
}

static napi_value n_pread(napi_env env, napi_callback_info info) {
  return positioned_io(env, info, 0);
}

static napi_value n_pwrite(napi_env env, napi_callback_info info) {
  return positioned_io(env, info, 1);
}

/*
 * read(fd, view[, offset, length]) / write(...) for sockets, pipes and character devices: -1 when
 * it would block. offset/length pick bytes of the view (no subarray per packet for a TAP).
 */
static napi_value stream_io(napi_env env, napi_callback_info info, int write_mode) {
  GET_ARGS(2);
  int32_t fd;
  void *data;
  size_t len;
  if (!get_i32(env, argv[0], &fd)) return throw_type(env, "fd must be an integer");
  if (!get_bytes(env, argv[1], &data, &len)) return throw_type(env, "buffer must be an ArrayBuffer view");
  if (argc > 2) {
    uint64_t offset, count;
    if (argc < 4 || !get_u64(env, argv[2], &offset) || !get_u64(env, argv[3], &count)) return throw_type(env, "offset and length must be non-negative integers");
    if (offset > len || count > len - offset) return throw_type(env, "offset + length lies outside the buffer");
    data = (char *)data + offset;
    len = (size_t)count;
  }
  ssize_t n = write_mode ? write(fd, data, len) : read(fd, data, len);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_i32(env, -1);
    return throw_errno(env, errno, write_mode ? "write" : "read");
  }
  return make_num(env, (double)n);
}

static napi_value n_read(napi_env env, napi_callback_info info) {
  return stream_io(env, info, 0);
}

static napi_value n_write(napi_env env, napi_callback_info info) {
  return stream_io(env, info, 1);
}

static napi_value n_ftruncate(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int32_t fd;
  uint64_t size;
  if (!get_i32(env, argv[0], &fd)) return throw_type(env, "fd must be an integer");
  if (!get_u64(env, argv[1], &size)) return throw_type(env, "size must be a non-negative integer");
  if (ftruncate(fd, (off_t)size) < 0) return throw_errno(env, errno, "ftruncate");
  return make_undefined(env);
}

static napi_value n_memfd_create(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  char name[250];
  size_t len;
  uint32_t flags;
  if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len) != napi_ok) return throw_type(env, "name must be a string");
  if (napi_get_value_uint32(env, argv[1], &flags) != napi_ok) return throw_type(env, "flags must be a number");
  int fd = memfd_create(name, flags | MFD_CLOEXEC);
  if (fd < 0) return throw_errno(env, errno, "memfd_create");
  return make_i32(env, fd);
}

/* setNonBlocking(fd, on): O_NONBLOCK on or off (an inherited socket may come either way). */
static napi_value n_set_nonblocking(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int32_t fd;
  bool on;
  if (!get_i32(env, argv[0], &fd) || napi_get_value_bool(env, argv[1], &on) != napi_ok) return throw_type(env, "fd must be an integer and on a boolean");
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return throw_errno(env, errno, "fcntl");
  if (fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) < 0) return throw_errno(env, errno, "fcntl");
  return make_undefined(env);
}

/*
 * poll(fds, events, timeoutMs) -> revents per fd: blocks this thread. Only for code that must
 * wait synchronously (a vfio-user request on a synchronous backend call); never on the main
 * loop's own fds while it should run.
 */
static napi_value n_poll(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  bool is;
  uint32_t n = 0;
  int32_t events, timeout;
  if (napi_is_array(env, argv[0], &is) != napi_ok || !is) return throw_type(env, "fds must be an array");
  napi_get_array_length(env, argv[0], &n);
  if (n == 0 || n > 16) return throw_errno(env, EINVAL, "poll");
  if (!get_i32(env, argv[1], &events) || !get_i32(env, argv[2], &timeout)) return throw_type(env, "events and timeoutMs must be integers");
  struct pollfd fds[16];
  for (uint32_t i = 0; i < n; i++) {
    napi_value el;
    int32_t fd;
    napi_get_element(env, argv[0], i, &el);
    if (!get_i32(env, el, &fd)) return throw_type(env, "fds must be integers");
    fds[i].fd = fd;
    fds[i].events = (short)events;
    fds[i].revents = 0;
  }
  int r;
  do {
    r = poll(fds, n, timeout);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, errno, "poll");
  napi_value out;
  napi_create_array_with_length(env, n, &out);
  for (uint32_t i = 0; i < n; i++) napi_set_element(env, out, i, make_i32(env, fds[i].revents));
  return out;
}

/* fstat(fd) -> { size, mode } */
static napi_value n_fstat(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t fd;
  if (!get_i32(env, argv[0], &fd)) return throw_type(env, "fd must be an integer");
  struct stat st;
  if (fstat(fd, &st) < 0) return throw_errno(env, errno, "fstat");
  napi_value out;
  napi_create_object(env, &out);
  napi_set_named_property(env, out, "size", make_num(env, (double)st.st_size));
  napi_set_named_property(env, out, "mode", make_num(env, (double)st.st_mode));
  return out;
}

/* ---- memory mappings ------------------------------------------------------------------- */

/*
 * Every live mapping is recorded so that munmap can find it, detach the ArrayBuffer first
 * (every JS view then reads as length 0 instead of faulting) and so that a mapping whose
 * ArrayBuffer is garbage-collected without munmap is still released exactly once.
 *
 * The records live in a hash table keyed by address (chained, grown by doubling), so finding
 * one for munmap and dropping one at finalization cost O(1) on average: a process that maps
 * and drops hundreds of thousands of buffers must not pay a scan of every live one per buffer.
 */
typedef struct mapping {
  void *addr;
  size_t length;
  int unmapped;
  struct mapping *next; /* hash chain */
} mapping;

static mapping **mapping_buckets = NULL;
static size_t mapping_bucket_count = 0; /* a power of two, or 0 before the first mapping */
static size_t mapping_count = 0;
/* Chain links followed by lookups, inserts and removals: what mappingStats() reports. */
static uint64_t mapping_steps = 0;
/* Worker threads (a vfio-user server on its own thread) map and unmap too. */
static pthread_mutex_t mappings_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t mapping_bucket(const void *addr, size_t count) {
  uint64_t h = ((uint64_t)(uintptr_t)addr >> 12) * 0x9E3779B97F4A7C15ull;
  return (size_t)(h >> 32) & (count - 1);
}

/* Caller holds mappings_lock. When calloc fails the table keeps its size: still correct, only slower. */
static void grow_mappings(void) {
  size_t count = mapping_bucket_count ? mapping_bucket_count * 2 : 1024;
  mapping **buckets = calloc(count, sizeof *buckets);
  if (!buckets) return;
  for (size_t i = 0; i < mapping_bucket_count; i++) {
    for (mapping *m = mapping_buckets[i], *next; m; m = next) {
      next = m->next;
      size_t b = mapping_bucket(m->addr, count);
      m->next = buckets[b];
      buckets[b] = m;
    }
  }
  free(mapping_buckets);
  mapping_buckets = buckets;
  mapping_bucket_count = count;
}

/* Caller holds mappings_lock. 0 when no table exists and none could be made. */
static int remember_mapping(mapping *m) {
  if (mapping_count >= mapping_bucket_count) grow_mappings();
  if (mapping_bucket_count == 0) return 0;
  size_t b = mapping_bucket(m->addr, mapping_bucket_count);
  m->next = mapping_buckets[b];
  mapping_buckets[b] = m;
  mapping_count++;
  mapping_steps++;
  return 1;
}

/* Caller holds mappings_lock. */
static void forget_mapping(mapping *m) {
  if (mapping_bucket_count == 0) return;
  for (mapping **p = &mapping_buckets[mapping_bucket(m->addr, mapping_bucket_count)]; *p; p = &(*p)->next) {
    mapping_steps++;
    if (*p == m) {
      *p = m->next;
      mapping_count--;
      return;
    }
  }
}

/* Caller holds mappings_lock. */
static mapping *find_mapping(void *addr) {
  if (mapping_bucket_count == 0) return NULL;
  for (mapping *m = mapping_buckets[mapping_bucket(addr, mapping_bucket_count)]; m; m = m->next) {
    mapping_steps++;
    if (m->addr == addr && !m->unmapped) return m;
  }
  return NULL;
}

static void finalize_mapping(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  mapping *m = hint;
  pthread_mutex_lock(&mappings_lock);
  if (!m->unmapped) munmap(m->addr, m->length);
  forget_mapping(m);
  pthread_mutex_unlock(&mappings_lock);
  free(m);
}

/* mappingStats() -> { live, steps }: live records and chain links walked so far (for tests of the table's cost). */
static napi_value n_mapping_stats(napi_env env, napi_callback_info info) {
  (void)info;
  pthread_mutex_lock(&mappings_lock);
  double live = (double)mapping_count, steps = (double)mapping_steps;
  pthread_mutex_unlock(&mappings_lock);
  napi_value out;
  napi_create_object(env, &out);
  napi_set_named_property(env, out, "live", make_num(env, live));
  napi_set_named_property(env, out, "steps", make_num(env, steps));
  return out;
}

/* mmap(length, prot, flags, fd, offset) -> ArrayBuffer over the new mapping. */
static napi_value n_mmap(napi_env env, napi_callback_info info) {
  GET_ARGS(5);
  uint64_t length, offset;
  int32_t prot, flags, fd;
  if (!get_u64(env, argv[0], &length) || length == 0) return throw_type(env, "length must be a positive integer");
  if (!get_i32(env, argv[1], &prot) || !get_i32(env, argv[2], &flags) || !get_i32(env, argv[3], &fd))
    return throw_type(env, "prot, flags and fd must be integers");
  if (!get_u64(env, argv[4], &offset)) return throw_type(env, "offset must be a non-negative integer");
  mapping *m = calloc(1, sizeof *m);
  if (!m) return throw_errno(env, ENOMEM, "mmap");
  void *addr = mmap(NULL, length, prot, flags, fd, (off_t)offset);
  if (addr == MAP_FAILED) {
    int err = errno;
    free(m);
    return throw_errno(env, err, "mmap");
  }
  m->addr = addr;
  m->length = length;
  napi_value ab;
  if (napi_create_external_arraybuffer(env, addr, length, finalize_mapping, m, &ab) != napi_ok) {
    munmap(addr, length);
    free(m);
    return throw_errno(env, ENOMEM, "napi_create_external_arraybuffer");
  }
  pthread_mutex_lock(&mappings_lock);
  int remembered = remember_mapping(m);
  pthread_mutex_unlock(&mappings_lock);
  if (!remembered) return throw_errno(env, ENOMEM, "mmap"); /* the ArrayBuffer's finalizer unmaps */
  return ab;
}

/* munmap(arrayBuffer): detach every view, then unmap. Unmapping twice is EINVAL, never a fault. */
static napi_value n_munmap(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  void *data;
  size_t len;
  bool is;
  if (napi_is_arraybuffer(env, argv[0], &is) != napi_ok || !is) return throw_type(env, "argument must be an ArrayBuffer from mmap");
  napi_get_arraybuffer_info(env, argv[0], &data, &len);
  pthread_mutex_lock(&mappings_lock);
  mapping *m = data ? find_mapping(data) : NULL;
  if (!m || m->length != len) {
    pthread_mutex_unlock(&mappings_lock);
    return throw_errno(env, EINVAL, "munmap");
  }
  if (napi_detach_arraybuffer(env, argv[0]) != napi_ok) {
    pthread_mutex_unlock(&mappings_lock);
    return throw_errno(env, EINVAL, "napi_detach_arraybuffer");
  }
  m->unmapped = 1;
  int r = munmap(m->addr, m->length);
  int err = errno;
  pthread_mutex_unlock(&mappings_lock);
  if (r < 0) return throw_errno(env, err, "munmap");
  return make_undefined(env);
}

/* Range of a view or ArrayBuffer with optional [offset, length) inside it. */
static int get_range(napi_env env, size_t argc, napi_value *argv, void **start, size_t *length) {
  void *data;
  size_t len;
  if (!get_bytes(env, argv[0], &data, &len)) return 0;
  uint64_t offset = 0, count = len;
  if (argc > 1 && !get_u64(env, argv[1], &offset)) return 0;
  if (argc > 2 && !get_u64(env, argv[2], &count)) return 0;
  if (offset > len || count > len - offset) return 0;
  *start = (char *)data + offset;
  *length = count;
  return 1;
}

/* madvise(view, advice) over whole pages covering the view. */
static napi_value n_madvise(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  void *start;
  size_t length;
  int32_t advice;
  if (!get_range(env, 1, argv, &start, &length)) return throw_type(env, "first argument must be a buffer");
  if (!get_i32(env, argv[1], &advice)) return throw_type(env, "advice must be an integer");
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t begin = (uintptr_t)start & ~(page - 1);
  uintptr_t end = ((uintptr_t)start + length + page - 1) & ~(page - 1);
  if (madvise((void *)begin, end - begin, advice) < 0) return throw_errno(env, errno, "madvise");
  return make_undefined(env);
}

static napi_value lock_io(napi_env env, napi_callback_info info, int lock) {
  GET_ARGS(1);
  void *start;
  size_t length;
  if (!get_range(env, 1, argv, &start, &length)) return throw_type(env, "argument must be a buffer");
  if ((lock ? mlock(start, length) : munlock(start, length)) < 0) return throw_errno(env, errno, lock ? "mlock" : "munlock");
  return make_undefined(env);
}

static napi_value n_mlock(napi_env env, napi_callback_info info) {
  return lock_io(env, info, 1);
}

static napi_value n_munlock(napi_env env, napi_callback_info info) {
  return lock_io(env, info, 0);
}

/* addressOf(view) -> the process virtual address of its first byte (for VFIO_IOMMU_MAP_DMA). */
static napi_value n_address_of(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  void *data;
  size_t len;
  if (!get_bytes(env, argv[0], &data, &len)) return throw_type(env, "argument must be a buffer");
  return make_num(env, (double)(uintptr_t)data);
}

/* getrlimit(resource) -> [soft, hard]; RLIM_INFINITY as -1. */
static napi_value n_getrlimit(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t resource;
  if (!get_i32(env, argv[0], &resource)) return throw_type(env, "resource must be an integer");
  struct rlimit rl;
  if (getrlimit(resource, &rl) < 0) return throw_errno(env, errno, "getrlimit");
  napi_value arr;
  napi_create_array_with_length(env, 2, &arr);
  napi_set_element(env, arr, 0, make_num(env, rl.rlim_cur == RLIM_INFINITY ? -1 : (double)rl.rlim_cur));
  napi_set_element(env, arr, 1, make_num(env, rl.rlim_max == RLIM_INFINITY ? -1 : (double)rl.rlim_max));
  return arr;
}

/* ---- eventfd --------------------------------------------------------------------------- */

static napi_value n_eventfd(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  uint32_t initval;
  int32_t flags;
  if (napi_get_value_uint32(env, argv[0], &initval) != napi_ok || !get_i32(env, argv[1], &flags))
    return throw_type(env, "initval and flags must be integers");
  int fd = eventfd(initval, flags | EFD_CLOEXEC);
  if (fd < 0) return throw_errno(env, errno, "eventfd");
  return make_i32(env, fd);
}

/* eventfdRead(fd) -> the counter (0 when nothing was signalled: the fd must be non-blocking). */
static napi_value n_eventfd_read(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t fd;
  if (!get_i32(env, argv[0], &fd)) return throw_type(env, "fd must be an integer");
  uint64_t value;
  ssize_t n = read(fd, &value, sizeof value);
  if (n < 0) {
    if (errno == EAGAIN) return make_num(env, 0);
    return throw_errno(env, errno, "read");
  }
  return make_num(env, (double)value);
}

static napi_value n_eventfd_write(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int32_t fd;
  uint64_t value;
  if (!get_i32(env, argv[0], &fd)) return throw_type(env, "fd must be an integer");
  if (!get_u64(env, argv[1], &value) || value == 0) return throw_type(env, "value must be a positive integer");
  if (write(fd, &value, sizeof value) < 0) return throw_errno(env, errno, "write");
  return make_undefined(env);
}

/*
 * eventfdTake(fd) -> the counter. One read(2), retried on EINTR: on a blocking eventfd it blocks
 * this thread in the kernel until the eventfd is signalled (a thread whose only job is to take
 * interrupts: one system call per interrupt, as a C driver's, and nothing allocated); on a
 * non-blocking one it returns 0 when nothing was signalled.
 */
static napi_value n_eventfd_take(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t fd;
  if (!get_i32(env, argv[0], &fd)) return throw_type(env, "fd must be an integer");
  uint64_t value;
  ssize_t n;
  do {
    n = read(fd, &value, sizeof value);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return make_num(env, 0);
    return throw_errno(env, errno, "read");
  }
  return make_num(env, (double)value);
}

/* setThreadAffinity(cpus: Int32Array): the calling thread runs only on these CPUs (sched_setaffinity). */
static napi_value n_set_thread_affinity(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  napi_typedarray_type type;
  size_t n, offset;
  void *data;
  napi_value ab;
  if (napi_get_typedarray_info(env, argv[0], &type, &n, &data, &ab, &offset) != napi_ok || type != napi_int32_array)
    return throw_type(env, "cpus must be an Int32Array");
  cpu_set_t set;
  CPU_ZERO(&set);
  const int32_t *cpus = data;
  for (size_t i = 0; i < n; i++) {
    if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) return throw_errno(env, EINVAL, "sched_setaffinity");
    CPU_SET(cpus[i], &set);
  }
  if (sched_setaffinity(0, sizeof set, &set) < 0) return throw_errno(env, errno, "sched_setaffinity");
  return make_undefined(env);
}

/*
 * setThreadScheduler(policy, priority): the calling thread's scheduling policy from now on
 * (sched_setscheduler on the thread: SCHED_FIFO with priority 1-99, SCHED_OTHER with 0).
 */
static napi_value n_set_thread_scheduler(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int32_t policy, priority;
  if (!get_i32(env, argv[0], &policy) || !get_i32(env, argv[1], &priority)) return throw_type(env, "policy and priority must be integers");
  struct sched_param param = {.sched_priority = priority};
  if (sched_setscheduler(0, policy, &param) < 0) return throw_errno(env, errno, "sched_setscheduler");
  return make_undefined(env);
}

/* dup(fd) -> a new fd for the same file, close-on-exec (a thread that must keep it open on its own). */
static napi_value n_dup(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t fd;
  if (!get_i32(env, argv[0], &fd)) return throw_type(env, "fd must be an integer");
  int r = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (r < 0) return throw_errno(env, errno, "fcntl");
  return make_i32(env, r);
}

/* ---- poll watchers on the event loop ---------------------------------------------------- */

/*
 * A uv_poll_t on the Node event loop watching an fd. In eventfd mode the counter is read here
 * and handed to the callback, so an interrupt costs one JS call and no extra syscall from JS.
 * Otherwise the callback gets the ready events and does its own I/O (sockets).
 */
typedef struct watcher {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  int fd;
  int eventfd_mode;
  int events;
  int stopped;   /* callback dropped, uv handle closing or closed */
  int uv_closed; /* libuv's close callback ran */
  int finalized; /* the JS handle was collected */
} watcher;

/* The struct lives until both libuv and the JS handle are done with it. */
static void watcher_closed(uv_handle_t *handle) {
  watcher *w = handle->data;
  w->uv_closed = 1;
  if (w->finalized) free(w);
}

/*
 * Stop watching at once, including closing the uv handle: closing it later (say at GC) would
 * make libuv drop the epoll registration of whatever fd now carries the same number.
 */
static void watcher_stop(watcher *w) {
  if (w->stopped) return;
  w->stopped = 1;
  napi_delete_reference(w->env, w->callback);
  napi_async_destroy(w->env, w->context);
  uv_close((uv_handle_t *)&w->poll, watcher_closed);
}

static void on_poll(uv_poll_t *handle, int status, int events) {
  watcher *w = handle->data;
  if (w->stopped) return;
  napi_env env = w->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value argv[2];
  if (w->eventfd_mode && status == 0) {
    uint64_t value = 0;
    ssize_t n = read(w->fd, &value, sizeof value);
    if (n < 0) {
      if (errno == EAGAIN) {
        napi_close_handle_scope(env, scope);
        return; /* another reader took it */
      }
      status = -errno;
    }
    argv[0] = make_i32(env, status);
    argv[1] = make_num(env, (double)value);
  } else {
    argv[0] = make_i32(env, status);
    argv[1] = make_i32(env, events);
  }
  napi_value cb, global, result;
  napi_get_reference_value(env, w->callback, &cb);
  napi_get_global(env, &global);
  /* make_callback drains microtasks afterwards, so promises settled in cb run promptly. */
  napi_status s = napi_make_callback(env, w->context, global, cb, 2, argv, &result);
  if (s == napi_pending_exception) {
    napi_value exception;
    napi_get_and_clear_last_exception(env, &exception);
    napi_fatal_exception(env, exception);
  }
  napi_close_handle_scope(env, scope);
}

static void finalize_watcher(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  watcher *w = data;
  w->finalized = 1;
  if (!w->stopped) {
    /* Nothing can stop it from JS any more: stop it now. */
    watcher_stop(w);
    return; /* freed by watcher_closed */
  }
  if (w->uv_closed) free(w);
}

/* watch(fd, events, eventfdMode, callback) -> external handle. events: 1 readable, 2 writable. */
static napi_value n_watch(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int32_t fd, events;
  bool eventfd_mode;
  if (!get_i32(env, argv[0], &fd) || !get_i32(env, argv[1], &events)) return throw_type(env, "fd and events must be integers");
  if (napi_get_value_bool(env, argv[2], &eventfd_mode) != napi_ok) return throw_type(env, "eventfdMode must be a boolean");
  napi_valuetype t;
  napi_typeof(env, argv[3], &t);
  if (t != napi_function) return throw_type(env, "callback must be a function");
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return throw_errno(env, EINVAL, "napi_get_uv_event_loop");
  watcher *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, ENOMEM, "uv_poll_init");
  w->env = env;
  w->fd = fd;
  w->eventfd_mode = eventfd_mode;
  w->events = events;
  int r = uv_poll_init(loop, &w->poll, fd);
  if (r < 0) {
    free(w);
    return throw_errno(env, -r, "uv_poll_init");
  }
  w->poll.data = w;
  r = uv_poll_start(&w->poll, events, on_poll);
  if (r < 0) {
    w->finalized = 1; /* no JS handle will exist */
    uv_close((uv_handle_t *)&w->poll, watcher_closed);
    return throw_errno(env, -r, "uv_poll_start");
  }
  napi_create_reference(env, argv[3], 1, &w->callback);
  napi_value resource_name;
  napi_create_string_utf8(env, "userpci:watch", NAPI_AUTO_LENGTH, &resource_name);
  napi_async_init(env, NULL, resource_name, &w->context);
  napi_value handle;
  napi_create_external(env, w, finalize_watcher, NULL, &handle);
  return handle;
}

static watcher *get_watcher(napi_env env, napi_value v) {
  watcher *w = NULL;
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t != napi_external) return NULL;
  napi_get_value_external(env, v, (void **)&w);
  return w;
}

/* watchStop(handle): idempotent. The fd is the caller's to close afterwards. */
static napi_value n_watch_stop(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  watcher *w = get_watcher(env, argv[0]);
  if (!w) return throw_type(env, "not a watcher handle");
  watcher_stop(w);
  return make_undefined(env);
}

/* watchRef(handle, keepAlive): whether this watcher keeps the process running. */
static napi_value n_watch_ref(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  watcher *w = get_watcher(env, argv[0]);
  bool ref;
  if (!w) return throw_type(env, "not a watcher handle");
  if (napi_get_value_bool(env, argv[1], &ref) != napi_ok) return throw_type(env, "keepAlive must be a boolean");
  if (w->stopped) return make_undefined(env);
  if (ref) uv_ref((uv_handle_t *)&w->poll);
  else uv_unref((uv_handle_t *)&w->poll);
  return make_undefined(env);
}

/* ---- UNIX sockets with file descriptors (Node's net drops SCM_RIGHTS) -------------------- */

static int fill_sockaddr(napi_env env, napi_value v, struct sockaddr_un *addr) {
  size_t len;
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (napi_get_value_string_utf8(env, v, addr->sun_path, sizeof addr->sun_path, &len) != napi_ok) return 0;
  return len > 0 && len < sizeof addr->sun_path - 1;
}

/* unixListen(path, backlog) -> non-blocking listening fd. */
static napi_value n_unix_listen(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  struct sockaddr_un addr;
  int32_t backlog;
  if (!fill_sockaddr(env, argv[0], &addr)) return throw_type(env, "path must be a non-empty string shorter than 107 bytes");
  if (!get_i32(env, argv[1], &backlog)) return throw_type(env, "backlog must be an integer");
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket");
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, err, "bind");
  }
  if (listen(fd, backlog) < 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, err, "listen");
  }
  return make_i32(env, fd);
}

/* unixAccept(fd) -> non-blocking connection fd, or -1 when none is pending. */
static napi_value n_unix_accept(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t fd;
  if (!get_i32(env, argv[0], &fd)) return throw_type(env, "fd must be an integer");
  int conn = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (conn < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_i32(env, -1);
    return throw_errno(env, errno, "accept4");
  }
  return make_i32(env, conn);
}

/* unixConnect(path) -> connected non-blocking fd (connect on a UNIX socket completes at once). */
static napi_value n_unix_connect(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  struct sockaddr_un addr;
  if (!fill_sockaddr(env, argv[0], &addr)) return throw_type(env, "path must be a non-empty string shorter than 107 bytes");
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket");
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, err, "connect");
  }
  int flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  return make_i32(env, fd);
}

/* socketpair() -> [fd, fd], both non-blocking (for in-process tests and twin sockets). */
static napi_value n_socketpair(napi_env env, napi_callback_info info) {
  (void)info;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) return throw_errno(env, errno, "socketpair");
  napi_value arr;
  napi_create_array_with_length(env, 2, &arr);
  napi_set_element(env, arr, 0, make_i32(env, sv[0]));
  napi_set_element(env, arr, 1, make_i32(env, sv[1]));
  return arr;
}

/*
 * sendmsg(fd, buffers[], fds[]) -> bytes sent, or -1 when the socket would block. The fds ride
 * with the first byte, which is what vfio-user peers expect (they collect them with the header).
 */
static napi_value n_sendmsg(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int32_t fd;
  if (!get_i32(env, argv[0], &fd)) return throw_type(env, "fd must be an integer");
  uint32_t nbuf = 0, nfds = 0;
  bool is;
  if (napi_is_array(env, argv[1], &is) != napi_ok || !is) return throw_type(env, "buffers must be an array");
  if (napi_is_array(env, argv[2], &is) != napi_ok || !is) return throw_type(env, "fds must be an array");
  napi_get_array_length(env, argv[1], &nbuf);
  napi_get_array_length(env, argv[2], &nfds);
  if (nbuf > 16 || nfds > MAX_FDS) return throw_errno(env, EINVAL, "sendmsg");
  struct iovec iov[16];
  for (uint32_t i = 0; i < nbuf; i++) {
    napi_value el;
    napi_get_element(env, argv[1], i, &el);
    if (!get_bytes(env, el, &iov[i].iov_base, &iov[i].iov_len)) return throw_type(env, "buffers must hold ArrayBuffer views");
  }
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct cmsghdr align;
  } control;
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = iov;
  msg.msg_iovlen = nbuf;
  if (nfds > 0) {
    memset(&control, 0, sizeof control);
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    int *out = (int *)CMSG_DATA(cmsg);
    for (uint32_t i = 0; i < nfds; i++) {
      napi_value el;
      int32_t v;
      napi_get_element(env, argv[2], i, &el);
      if (!get_i32(env, el, &v)) return throw_type(env, "fds must be integers");
      out[i] = v;
    }
  }
  ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_i32(env, -1);
    return throw_errno(env, errno, "sendmsg");
  }
  return make_num(env, (double)n);
}

/*
 * recvmsg(fd, view, maxFds) -> { bytes, fds } (bytes -1 when it would block, 0 at end of
 * stream). File descriptors beyond maxFds, or truncated by the kernel, are closed here so none
 * leak; `truncated` says it happened so the caller can treat the message as malformed.
 */
static napi_value n_recvmsg(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int32_t fd, max_fds;
  void *data;
  size_t len;
  if (!get_i32(env, argv[0], &fd) || !get_i32(env, argv[2], &max_fds)) return throw_type(env, "fd and maxFds must be integers");
  if (!get_bytes(env, argv[1], &data, &len)) return throw_type(env, "buffer must be an ArrayBuffer view");
  struct iovec iov = {data, len};
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct cmsghdr align;
  } control;
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof control.buf;
  ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  napi_value result, fds;
  napi_create_object(env, &result);
  napi_create_array(env, &fds);
  if (n < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK) return throw_errno(env, errno, "recvmsg");
    n = -1;
  }
  uint32_t count = 0;
  bool truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  if (n >= 0) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      int *in = (int *)CMSG_DATA(c);
      for (int i = 0; i < k; i++) {
        if ((int32_t)count < max_fds) {
          napi_set_element(env, fds, count++, make_i32(env, in[i]));
        } else {
          close(in[i]);
          truncated = true;
        }
      }
    }
  }
  napi_value truncated_value;
  napi_get_boolean(env, truncated, &truncated_value);
  napi_set_named_property(env, result, "bytes", make_num(env, (double)n));
  napi_set_named_property(env, result, "fds", fds);
  napi_set_named_property(env, result, "truncated", truncated_value);
  return result;
}

/* ---- io_uring (for ublk; kept apart from the rest) ----------------------------------------
 * Only the three system calls: ring layout, SQE encoding, submission and completion policy all
 * live in TypeScript (src/io-uring). The rings are mapped with mmap() above (offsets
 * IORING_OFF_*); completions reach the event loop through an eventfd registered with the ring
 * and watched by watch(), exactly like interrupts.
 */

/* ioUringSetup(entries, params) -> ring fd; params: a 120-byte struct io_uring_params, filled in. */
static napi_value n_io_uring_setup(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  uint32_t entries;
  void *params;
  size_t len;
  if (napi_get_value_uint32(env, argv[0], &entries) != napi_ok) return throw_type(env, "entries must be an integer");
  if (!get_bytes(env, argv[1], &params, &len) || len < 120) return throw_type(env, "params must be 120 bytes (struct io_uring_params)");
  long fd = syscall(__NR_io_uring_setup, entries, params);
  if (fd < 0) return throw_errno(env, errno, "io_uring_setup");
  /* The ring must not leak into children (the kernel offers no flag for it). */
  fcntl((int)fd, F_SETFD, FD_CLOEXEC);
  return make_i32(env, (int32_t)fd);
}

/* ioUringEnter(fd, toSubmit, minComplete, flags) -> SQEs consumed. */
static napi_value n_io_uring_enter(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int32_t fd;
  uint32_t to_submit, min_complete, flags;
  if (!get_i32(env, argv[0], &fd) || napi_get_value_uint32(env, argv[1], &to_submit) != napi_ok ||
      napi_get_value_uint32(env, argv[2], &min_complete) != napi_ok || napi_get_value_uint32(env, argv[3], &flags) != napi_ok)
    return throw_type(env, "fd, toSubmit, minComplete and flags must be integers");
  long r = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
  if (r < 0) return throw_errno(env, errno, "io_uring_enter");
  return make_num(env, (double)r);
}

/* ioUringRegister(fd, opcode, arg | null, nrArgs) -> the call's result. */
static napi_value n_io_uring_register(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int32_t fd;
  uint32_t opcode, nr_args;
  void *arg = NULL;
  size_t len;
  if (!get_i32(env, argv[0], &fd) || napi_get_value_uint32(env, argv[1], &opcode) != napi_ok ||
      napi_get_value_uint32(env, argv[3], &nr_args) != napi_ok)
    return throw_type(env, "fd, opcode and nrArgs must be integers");
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t != napi_null && t != napi_undefined && !get_bytes(env, argv[2], &arg, &len)) return throw_type(env, "arg must be a buffer or null");
  long r = syscall(__NR_io_uring_register, fd, opcode, arg, nr_args);
  if (r < 0) return throw_errno(env, errno, "io_uring_register");
  return make_num(env, (double)r);
}

/* ---- module ---------------------------------------------------------------------------- */

static napi_value constants(napi_env env) {
  napi_value obj;
  napi_create_object(env, &obj);
#define C(name) napi_set_named_property(env, obj, #name, make_num(env, (double)(name)))
  C(O_RDONLY); C(O_WRONLY); C(O_RDWR); C(O_NONBLOCK); C(O_SYNC);
  C(PROT_NONE); C(PROT_READ); C(PROT_WRITE);
  C(MAP_SHARED); C(MAP_PRIVATE); C(MAP_ANONYMOUS); C(MAP_HUGETLB); C(MAP_POPULATE); C(MAP_LOCKED); C(MAP_NORESERVE);
  C(MADV_DONTFORK); C(MADV_DOFORK); C(MADV_HUGEPAGE); C(MADV_DONTDUMP);
  C(MFD_ALLOW_SEALING); C(MFD_HUGETLB);
  C(EFD_NONBLOCK); C(EFD_SEMAPHORE);
  C(RLIMIT_MEMLOCK); C(RLIMIT_NOFILE);
  C(POLLIN); C(POLLOUT); C(POLLERR); C(POLLHUP); C(POLLNVAL);
  C(SCHED_OTHER); C(SCHED_FIFO);
  napi_set_named_property(env, obj, "PAGE_SIZE", make_num(env, (double)sysconf(_SC_PAGESIZE)));
#undef C
  return obj;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
#define F(js, c) {js, NULL, c, NULL, NULL, NULL, napi_enumerable, NULL}
    F("open", n_open), F("close", n_close), F("ioctl", n_ioctl),
    F("pread", n_pread), F("pwrite", n_pwrite), F("read", n_read), F("write", n_write),
    F("ftruncate", n_ftruncate), F("memfdCreate", n_memfd_create),
    F("mmap", n_mmap), F("munmap", n_munmap), F("madvise", n_madvise), F("mlock", n_mlock),
    F("munlock", n_munlock), F("addressOf", n_address_of), F("mappingStats", n_mapping_stats), F("getrlimit", n_getrlimit),
    F("eventfd", n_eventfd), F("eventfdRead", n_eventfd_read), F("eventfdWrite", n_eventfd_write),
    F("eventfdTake", n_eventfd_take), F("setThreadAffinity", n_set_thread_affinity),
    F("setThreadScheduler", n_set_thread_scheduler), F("dup", n_dup),
    F("watch", n_watch), F("watchStop", n_watch_stop), F("watchRef", n_watch_ref),
    F("unixListen", n_unix_listen), F("unixAccept", n_unix_accept), F("unixConnect", n_unix_connect),
    F("socketpair", n_socketpair), F("sendmsg", n_sendmsg), F("recvmsg", n_recvmsg),
    F("setNonBlocking", n_set_nonblocking), F("poll", n_poll), F("fstat", n_fstat),
    /* io_uring (ublk) */
    F("ioUringSetup", n_io_uring_setup), F("ioUringEnter", n_io_uring_enter), F("ioUringRegister", n_io_uring_register),
#undef F
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  napi_set_named_property(env, exports, "constants", constants(env));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
