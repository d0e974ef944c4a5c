/*
 * C side of bench:native: the same work as bench/native/run.ts does in TypeScript, on the same
 * kind of memory and the same kernel objects, built by the bench with the machine's cc -O2.
 * Prints one JSON object.
 *
 *   baseline regs N            volatile 32/64-bit loads and stores on the memfd mapped at fd 3
 *   baseline irq N             eventfd latency: a raiser thread writes, this thread blocks in read(2)
 *   baseline raise N [CPU]     the raiser alone, for the TypeScript receiver: eventfd at fd 3,
 *                              shared page at fd 4 (f64 raise time at 0, i32 acknowledgements at 8)
 *   baseline receive N [CPU [PRIO]]  a C receiver for that raiser (blocks in read(2) on fd 3): the
 *                              same two-process set-up as ours, for a like-for-like C figure;
 *                              pinned to CPU, SCHED_FIFO at PRIO when given
 *   baseline dma N             the JS-side work of a streaming map+unmap: first-fit IOVA allocation
 *                              with merge on free and the VFIO map/unmap argument structs, no ioctl
 *   baseline nvme QD N [CPU]   the NVMe protocol at queue depth QD on an instant device, one thread (on CPU):
 *                              SQ entries, doorbells, CQ phase polling, a callback per completion
 *   baseline nvme-device QD N  the instant device's own cost per command (to subtract)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* CPU time of the process: loops are timed in CPU time, as the TypeScript side times its own. */
static double cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "baseline: %s: %s\n", what, strerror(errno));
  exit(1);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* ---- registers ------------------------------------------------------------------------- */

static void bench_regs(long n) {
  void *p = mmap(NULL, 0x4000, PROT_READ | PROT_WRITE, MAP_SHARED, 3, 0);
  if (p == MAP_FAILED) die("mmap fd 3");
  volatile uint32_t *r32 = p;
  volatile uint64_t *r64 = p;
  uint64_t sink = 0;
  double best[4] = {1e9, 1e9, 1e9, 1e9};
  for (int round = 0; round < 5; round++) {
    double t0 = cpu_ns();
    for (long i = 0; i < n; i++) sink += r32[7];
    double t1 = cpu_ns();
    for (long i = 0; i < n; i++) r32[0x400] = (uint32_t)i;
    double t2 = cpu_ns();
    for (long i = 0; i < n; i++) sink += r64[5];
    double t3 = cpu_ns();
    for (long i = 0; i < n; i++) r64[5] = (uint64_t)i << 12;
    double t4 = cpu_ns();
    double t[4] = {t1 - t0, t2 - t1, t3 - t2, t4 - t3};
    for (int k = 0; k < 4; k++) if (t[k] / n < best[k]) best[k] = t[k] / n;
  }
  if (sink == 42) puts("");
  printf("{\"read32Ns\": %.3f, \"write32Ns\": %.3f, \"read64Ns\": %.3f, \"write64Ns\": %.3f}\n", best[0], best[1], best[2], best[3]);
}

/* ---- interrupts ------------------------------------------------------------------------ */

struct shared_page {
  double raised_at;
  int32_t ack;
  int32_t pad;
};

struct raiser {
  int efd;
  volatile struct shared_page *page;
  long n;
};

/* Run this thread on one CPU (cpu < 0: leave it) and, with priority > 0, SCHED_FIFO at that priority. */
static void place(int cpu, int priority) {
  if (cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set)) die("sched_setaffinity");
  }
  if (priority > 0) {
    struct sched_param param = {.sched_priority = priority};
    if (sched_setscheduler(0, SCHED_FIFO, &param)) die("sched_setscheduler");
  }
}

static void sleep_us(long us) {
  struct timespec ts = {0, us * 1000};
  nanosleep(&ts, NULL);
}

/* Raise interrupt i once the receiver acknowledged i-1 and had time to block again. */
static void *raise_all(void *arg) {
  struct raiser *r = arg;
  for (long i = 0; i < r->n; i++) {
    for (long waited = 0; __atomic_load_n(&r->page->ack, __ATOMIC_ACQUIRE) < i; waited++) {
      if (waited > 2000000) {
        fprintf(stderr, "baseline: no acknowledgement of interrupt %ld\n", i);
        exit(1);
      }
      sleep_us(5);
    }
    sleep_us(50);
    r->page->raised_at = now_ns();
    uint64_t one = 1;
    if (write(r->efd, &one, sizeof one) != sizeof one) die("write eventfd");
  }
  return NULL;
}

static void print_latencies(double *lat, long n, long skip) {
  qsort(lat + skip, n - skip, sizeof *lat, cmp_double);
  long m = n - skip;
  printf("{\"p50Ns\": %.0f, \"p90Ns\": %.0f, \"p99Ns\": %.0f}\n", lat[skip + m / 2], lat[skip + m * 9 / 10], lat[skip + m * 99 / 100]);
}

static void bench_irq(long n) {
  static struct shared_page page;
  struct raiser r = {eventfd(0, EFD_CLOEXEC), &page, n};
  if (r.efd < 0) die("eventfd");
  double *lat = calloc(n, sizeof *lat);
  pthread_t t;
  pthread_create(&t, NULL, raise_all, &r);
  for (long i = 0; i < n; i++) {
    uint64_t count;
    if (read(r.efd, &count, sizeof count) != sizeof count) die("read eventfd");
    lat[i] = now_ns() - page.raised_at;
    __atomic_store_n(&page.ack, (int32_t)(i + 1), __ATOMIC_RELEASE);
  }
  pthread_join(t, NULL);
  print_latencies(lat, n, n / 20);
}

/*
 * The receiver alone, for the same cross-process set-up as the TypeScript receiver's: eventfd at
 * fd 3 (made blocking: one read(2) per interrupt, as our dedicated thread), page at fd 4; on CPU
 * `cpu` (-1: anywhere), SCHED_FIFO at `priority` when above 0 (as our thread with realtimePriority).
 */
static void bench_receive(long n, int cpu, int priority) {
  volatile struct shared_page *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, 4, 0);
  if (page == MAP_FAILED) die("mmap fd 4");
  if (fcntl(3, F_SETFL, fcntl(3, F_GETFL) & ~O_NONBLOCK)) die("fcntl fd 3");
  place(cpu, priority);
  double *lat = calloc(n, sizeof *lat);
  for (long i = 0; i < n; i++) {
    uint64_t count;
    ssize_t r;
    while ((r = read(3, &count, sizeof count)) < 0 && errno == EINTR) {
    }
    if (r != sizeof count) die("read eventfd");
    lat[i] = now_ns() - page->raised_at;
    __atomic_store_n(&page->ack, (int32_t)(i + 1), __ATOMIC_RELEASE);
  }
  print_latencies(lat, n, n / 20);
}

static void bench_raise(long n, int cpu) {
  void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, 4, 0);
  if (p == MAP_FAILED) die("mmap fd 4");
  place(cpu, 0);
  struct raiser r = {3, p, n};
  raise_all(&r);
  while (__atomic_load_n(&r.page->ack, __ATOMIC_ACQUIRE) < n) sleep_us(100);
  puts("{}");
}

/* ---- DMA map+unmap bookkeeping --------------------------------------------------------- */

struct span {
  uint64_t start, end;
};
static struct span free_spans[1024];
static int nfree;

static uint64_t iova_alloc(uint64_t size, uint64_t align) {
  for (int i = 0; i < nfree; i++) {
    uint64_t start = (free_spans[i].start + align - 1) & ~(align - 1);
    if (start + size > free_spans[i].end) continue;
    struct span before = {free_spans[i].start, start}, after = {start + size, free_spans[i].end};
    int pieces = (before.end > before.start) + (after.end > after.start);
    memmove(&free_spans[i + pieces], &free_spans[i + 1], (nfree - i - 1) * sizeof *free_spans);
    nfree += pieces - 1;
    if (before.end > before.start) free_spans[i++] = before;
    if (after.end > after.start) free_spans[i] = after;
    return start;
  }
  return 0;
}

static void iova_free(uint64_t start, uint64_t size) {
  int i = 0;
  while (i < nfree && free_spans[i].start < start) i++;
  memmove(&free_spans[i + 1], &free_spans[i], (nfree - i) * sizeof *free_spans);
  free_spans[i] = (struct span){start, start + size};
  nfree++;
  if (i + 1 < nfree && free_spans[i].end == free_spans[i + 1].start) {
    free_spans[i].end = free_spans[i + 1].end;
    memmove(&free_spans[i + 1], &free_spans[i + 2], (nfree - i - 2) * sizeof *free_spans);
    nfree--;
  }
  if (i > 0 && free_spans[i - 1].end == free_spans[i].start) {
    free_spans[i - 1].end = free_spans[i].end;
    memmove(&free_spans[i], &free_spans[i + 1], (nfree - i - 1) * sizeof *free_spans);
    nfree--;
  }
}

static void bench_dma(long n) {
  free_spans[0] = (struct span){1 << 20, 1ull << 39};
  nfree = 1;
  static char buffer[10000];
  volatile struct vfio_iommu_type1_dma_map map;
  volatile struct vfio_iommu_type1_dma_unmap unmap;
  double best = 1e9;
  for (int round = 0; round < 5; round++) {
    double t0 = cpu_ns();
    for (long i = 0; i < n; i++) {
      uintptr_t address = (uintptr_t)buffer, page = 4096;
      uintptr_t vaddr = address & ~(page - 1);
      uint64_t size = ((address + sizeof buffer + page - 1) & ~(page - 1)) - vaddr;
      uint64_t iova = iova_alloc(size, page);
      map.argsz = sizeof map;
      map.flags = VFIO_DMA_MAP_FLAG_READ;
      map.vaddr = vaddr;
      map.iova = iova;
      map.size = size;
      unmap.argsz = sizeof unmap;
      unmap.flags = 0;
      unmap.iova = iova;
      unmap.size = size;
      iova_free(iova, size);
    }
    double t = (cpu_ns() - t0) / n;
    if (t < best) best = t;
  }
  printf("{\"mapUnmapNs\": %.3f}\n", best);
}

/* ---- NVMe on an instant device ---------------------------------------------------------- */

static uint32_t doorbells[4096];
static uint32_t *sq, *cq;
static int entries, cq_entries;
static int sq_tail, cq_head, phase = 1;
static int dev_sq_head, dev_cq_tail, dev_phase = 1;
static long completed;
static long unacked, ack_threshold;

/* The device: every command up to the SQ tail doorbell completes at once. */
static void __attribute__((noinline)) device_run(void) {
  uint32_t tail = doorbells[2];
  while ((uint32_t)dev_sq_head != tail) {
    uint32_t *e = &sq[dev_sq_head * 16];
    if (++dev_sq_head == entries) dev_sq_head = 0;
    uint32_t *c = &cq[dev_cq_tail * 4];
    c[0] = 0;
    c[1] = 0;
    c[2] = (uint32_t)dev_sq_head | (1u << 16);
    c[3] = (e[0] >> 16) | ((uint32_t)dev_phase << 16);
    if (++dev_cq_tail == cq_entries) {
      dev_cq_tail = 0;
      dev_phase ^= 1;
    }
  }
}

typedef void (*callback_fn)(int slot);
static callback_fn callbacks[4096];
static uint64_t lba_state = 0x2545f491;
static uint64_t buffer_iova = 0x200000;

static void submit(int slot) {
  uint32_t *e = &sq[sq_tail * 16];
  lba_state ^= lba_state << 13;
  lba_state ^= lba_state >> 7;
  lba_state ^= lba_state << 17;
  uint64_t lba = (lba_state % (1u << 21)) * 8;
  uint64_t prp1 = buffer_iova + (uint64_t)slot * 4096;
  e[0] = 0x02 | ((uint32_t)slot << 16);
  e[1] = 1;
  e[2] = e[3] = e[4] = e[5] = 0;
  e[6] = (uint32_t)prp1;
  e[7] = (uint32_t)(prp1 >> 32);
  e[8] = e[9] = 0;
  e[10] = (uint32_t)lba;
  e[11] = (uint32_t)(lba >> 32);
  e[12] = 7;
  e[13] = e[14] = e[15] = 0;
  if (++sq_tail == entries) sq_tail = 0;
}

static volatile int stop_submitting;
static void resubmit(int slot) {
  completed++;
  if (!stop_submitting) submit(slot);
}

/* Reap every posted completion, a callback each, one doorbell for what they submitted. */
static int reap(void) {
  int n = 0;
  for (;;) {
    uint32_t dw3 = __atomic_load_n(&cq[cq_head * 4 + 3], __ATOMIC_ACQUIRE);
    if (((dw3 >> 16) & 1) != (uint32_t)phase) break;
    if (++cq_head == cq_entries) {
      cq_head = 0;
      phase ^= 1;
    }
    n++;
    int cid = dw3 & 0xffff;
    callbacks[cid](cid);
  }
  if (n > 0) {
    unacked += n;
    if (unacked >= ack_threshold) {
      unacked = 0;
      __atomic_store_n(&doorbells[3], (uint32_t)cq_head, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&doorbells[2], (uint32_t)sq_tail, __ATOMIC_RELEASE);
  }
  return n;
}

static void setup_nvme(int qd) {
  entries = qd + 1;
  cq_entries = 2 * qd + 1 < 256 ? 256 : 2 * qd + 1;
  ack_threshold = cq_entries - 1 - qd;
  sq = aligned_alloc(4096, ((size_t)entries * 64 + 4095) & ~4095ul);
  cq = aligned_alloc(4096, ((size_t)cq_entries * 16 + 4095) & ~4095ul);
  memset(cq, 0, (size_t)cq_entries * 16);
  for (int i = 0; i < qd; i++) callbacks[i] = resubmit;
}

static void bench_nvme(int qd, long n) {
  setup_nvme(qd);
  for (int i = 0; i < qd; i++) submit(i);
  doorbells[2] = (uint32_t)sq_tail;
  long target = n / 10;
  while (completed < target) {
    device_run();
    reap();
  }
  double t0 = cpu_ns();
  long start = completed;
  while (completed - start < n) {
    device_run();
    reap();
  }
  double t = (cpu_ns() - t0) / (double)(completed - start);
  stop_submitting = 1;
  while (dev_sq_head != sq_tail || completed < start + n) {
    device_run();
    if (reap() == 0) break;
  }
  printf("{\"nsPerIo\": %.3f}\n", t);
}

static void bench_nvme_device(int qd, long n) {
  setup_nvme(qd);
  double t0 = cpu_ns();
  long done = 0;
  while (done < n) {
    for (int i = 0; i < qd; i++) submit(i);
    doorbells[2] = (uint32_t)sq_tail;
    device_run();
    done += qd;
    /* Take the completions without the driver's work: reset the CQ side. */
    cq_head = dev_cq_tail;
    phase = dev_phase;
  }
  double t1 = cpu_ns();
  /* Subtract the submissions themselves. */
  double t2 = cpu_ns();
  for (long d = 0; d < n; d += qd) {
    for (int i = 0; i < qd; i++) submit(i);
    doorbells[2] = (uint32_t)sq_tail;
    dev_sq_head = sq_tail;
  }
  double t3 = cpu_ns();
  printf("{\"deviceNsPerCommand\": %.3f}\n", ((t1 - t0) - (t3 - t2)) / n);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s regs|irq|raise|dma N | nvme QD N [CPU] | nvme-device QD N\n", argv[0]);
    return 2;
  }
  if (!strcmp(argv[1], "regs")) bench_regs(atol(argv[2]));
  else if (!strcmp(argv[1], "irq")) bench_irq(atol(argv[2]));
  else if (!strcmp(argv[1], "raise")) bench_raise(atol(argv[2]), argc > 3 ? atoi(argv[3]) : -1);
  else if (!strcmp(argv[1], "receive")) bench_receive(atol(argv[2]), argc > 3 ? atoi(argv[3]) : -1, argc > 4 ? atoi(argv[4]) : 0);
  else if (!strcmp(argv[1], "dma")) bench_dma(atol(argv[2]));
  else if (!strcmp(argv[1], "nvme") && (argc == 4 || argc == 5)) {
    place(argc == 5 ? atoi(argv[4]) : -1, 0);
    bench_nvme(atoi(argv[2]), atol(argv[3]));
  }
  else if (!strcmp(argv[1], "nvme-device") && argc == 4) bench_nvme_device(atoi(argv[2]), atol(argv[3]));
  else return 2;
  return 0;
}
