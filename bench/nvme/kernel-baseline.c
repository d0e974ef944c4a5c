/*
 * The kernel's nvme driver, measured the way fio's io_uring engine would: O_DIRECT reads
 * through io_uring (raw syscalls, no liburing), a fixed queue depth kept full, for a fixed time.
 * Built statically on the host (cc -static -O2) and run in the guest by bench/nvme/guest.ts.
 *
 *   kernel-baseline DEVICE randread|seqread BLOCK_BYTES QUEUE_DEPTH SECONDS [WARMUP_SECONDS]
 *
 * Prints one JSON line: {"ios":N,"seconds":S,"iops":R,"mbps":M}. Exit 1 on any error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/io_uring.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int ring_fd;
static unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
static unsigned *cq_head, *cq_tail, *cq_mask;
static struct io_uring_sqe *sqes;
static struct io_uring_cqe *cqes;

static void die(const char *what) {
  fprintf(stderr, "kernel-baseline: %s: %s\n", what, strerror(errno));
  exit(1);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void setup(unsigned entries) {
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  ring_fd = (int)syscall(__NR_io_uring_setup, entries, &p);
  if (ring_fd < 0) die("io_uring_setup");
  size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  if (p.features & IORING_FEAT_SINGLE_MMAP) {
    if (cq_size > sq_size) sq_size = cq_size;
    cq_size = sq_size;
  }
  char *sq = mmap(0, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQ_RING);
  if (sq == MAP_FAILED) die("mmap sq ring");
  char *cq = sq;
  if (!(p.features & IORING_FEAT_SINGLE_MMAP)) {
    cq = mmap(0, cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_CQ_RING);
    if (cq == MAP_FAILED) die("mmap cq ring");
  }
  sq_head = (unsigned *)(sq + p.sq_off.head);
  sq_tail = (unsigned *)(sq + p.sq_off.tail);
  sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
  sq_array = (unsigned *)(sq + p.sq_off.array);
  cq_head = (unsigned *)(cq + p.cq_off.head);
  cq_tail = (unsigned *)(cq + p.cq_off.tail);
  cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
  cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
  sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQES);
  if (sqes == MAP_FAILED) die("mmap sqes");
}

/* Queue one read (not yet submitted). */
static void queue_read(int fd, void *buf, unsigned len, uint64_t off, uint64_t tag) {
  unsigned tail = *sq_tail;
  unsigned idx = tail & *sq_mask;
  struct io_uring_sqe *s = &sqes[idx];
  memset(s, 0, sizeof *s);
  s->opcode = IORING_OP_READ;
  s->fd = fd;
  s->addr = (uint64_t)(uintptr_t)buf;
  s->len = len;
  s->off = off;
  s->user_data = tag;
  sq_array[idx] = idx;
  __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: %s DEVICE randread|seqread BLOCK_BYTES QUEUE_DEPTH SECONDS [WARMUP_SECONDS]\n", argv[0]);
    return 2;
  }
  const char *dev = argv[1];
  int random = strcmp(argv[2], "randread") == 0;
  if (!random && strcmp(argv[2], "seqread") != 0) {
    fprintf(stderr, "mode must be randread or seqread\n");
    return 2;
  }
  unsigned bs = (unsigned)atoi(argv[3]);
  unsigned qd = (unsigned)atoi(argv[4]);
  double seconds = atof(argv[5]);
  double warmup = argc > 6 ? atof(argv[6]) : 0.5;
  if (bs == 0 || bs % 512 || qd == 0 || qd > 1024 || seconds <= 0) {
    fprintf(stderr, "bad arguments\n");
    return 2;
  }
  int fd = open(dev, O_RDONLY | O_DIRECT);
  if (fd < 0) die(dev);
  uint64_t size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) < 0) die("BLKGETSIZE64");
  uint64_t units = size / bs;
  if (units < qd) {
    fprintf(stderr, "device too small\n");
    return 1;
  }
  char *mem;
  if (posix_memalign((void **)&mem, 4096, (size_t)bs * qd)) die("posix_memalign");
  memset(mem, 0, (size_t)bs * qd);
  setup(qd);
  uint64_t seq = 0;
  for (unsigned i = 0; i < qd; i++) {
    uint64_t unit = random ? next_rand() % units : (seq++ % units);
    queue_read(fd, mem + (size_t)i * bs, bs, unit * bs, i);
  }
  unsigned to_submit = qd;
  uint64_t ios = 0, measured = 0;
  double t0 = now(), start = 0;
  int measuring = 0;
  for (;;) {
    int r = (int)syscall(__NR_io_uring_enter, ring_fd, to_submit, 1, IORING_ENTER_GETEVENTS, NULL, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      die("io_uring_enter");
    }
    to_submit = 0;
    unsigned head = *cq_head;
    unsigned tail = __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE);
    double t = now();
    if (!measuring && t - t0 >= warmup) {
      measuring = 1;
      start = t;
      measured = ios;
    }
    int done = measuring && t - start >= seconds;
    while (head != tail) {
      struct io_uring_cqe *c = &cqes[head & *cq_mask];
      if (c->res != (int)bs) {
        errno = c->res < 0 ? -c->res : EIO;
        die("read");
      }
      unsigned slot = (unsigned)c->user_data;
      head++;
      ios++;
      if (!done) {
        uint64_t unit = random ? next_rand() % units : (seq++ % units);
        queue_read(fd, mem + (size_t)slot * bs, bs, unit * bs, slot);
        to_submit++;
      }
    }
    __atomic_store_n(cq_head, head, __ATOMIC_RELEASE);
    if (done) {
      double elapsed = t - start;
      uint64_t n = ios - measured;
      printf("{\"ios\":%llu,\"seconds\":%.4f,\"iops\":%.1f,\"mbps\":%.2f}\n", (unsigned long long)n, elapsed, n / elapsed, n * (double)bs / elapsed / 1e6);
      return 0;
    }
  }
}
