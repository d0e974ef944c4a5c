/*
 * Baseline for the VFIO and interrupt benchmarks: the same operations as bench/vfio/guest.ts,
 * in C, on the same edu device through the same VFIO interfaces. Built statically on the host
 * and run in the guest. Prints one JSON object.
 *
 *   edu-baseline regs  ADDRESS N      register read and write cost (ns per access)
 *   edu-baseline dma   ADDRESS N      coherent buffer alloc+map+unmap+free per second
 *   edu-baseline irq   ADDRESS N      MSI latency: raise register write to read() returning
 *   edu-baseline irq-thread ADDRESS N [PRIO]  MSI latency to a reader thread blocked in read(),
 *                                     woken by the IRQ; the raiser blocks in read(2) on an eventfd
 *                                     the reader signals (the span and the steps of our 'thread'
 *                                     delivery, in C, and the same wait as our raiser's); with
 *                                     PRIO the reader runs SCHED_FIFO at PRIO (as realtimePriority)
 *   edu-baseline clock - N            ns per clock_gettime(CLOCK_MONOTONIC) (no device)
 *
 * With IRQ_SAMPLES=FILE in the environment the irq modes also write each sample's start and end
 * (CLOCK_MONOTONIC ns) and the thread ids to FILE as JSON, for bench/vfio/irq-trace.ts.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
  fprintf(stderr, "edu-baseline: %s: %s\n", what, strerror(errno));
  exit(1);
}

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int container, device;
static volatile uint32_t *bar0;

static void open_device(const char *address) {
  char path[256], link[256];
  snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu_group", address);
  ssize_t n = readlink(path, link, sizeof link - 1);
  if (n < 0) die("iommu_group");
  link[n] = 0;
  const char *group_id = strrchr(link, '/') + 1;
  container = open("/dev/vfio/vfio", O_RDWR);
  if (container < 0) die("open container");
  snprintf(path, sizeof path, "/dev/vfio/%s", group_id);
  int group = open(path, O_RDWR);
  if (group < 0) die("open group");
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)) die("set container");
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) die("set iommu");
  device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, address);
  if (device < 0) die("get device");
  struct vfio_region_info reg = {.argsz = sizeof reg, .index = VFIO_PCI_BAR0_REGION_INDEX};
  if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &reg)) die("region info");
  bar0 = mmap(NULL, reg.size, PROT_READ | PROT_WRITE, MAP_SHARED, device, reg.offset);
  if (bar0 == MAP_FAILED) die("mmap bar0");
  /* bus master + memory decode, as the TypeScript side does on open */
  struct vfio_region_info cfg = {.argsz = sizeof cfg, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &cfg)) die("config info");
  uint16_t cmd;
  if (pread(device, &cmd, 2, cfg.offset + 4) != 2) die("read command");
  cmd |= 0x6;
  if (pwrite(device, &cmd, 2, cfg.offset + 4) != 2) die("write command");
}

static void bench_regs(long n) {
  uint32_t sink = 0;
  double t0 = now_ns();
  for (long i = 0; i < n; i++) sink += bar0[0];
  double t1 = now_ns();
  for (long i = 0; i < n; i++) bar0[1] = (uint32_t)i; /* liveness register */
  double t2 = now_ns();
  if (sink == 42) puts("");
  printf("{\"readNs\": %.2f, \"writeNs\": %.2f}\n", (t1 - t0) / n, (t2 - t1) / n);
}

/* The same steps DmaSpace.allocate + DmaBuffer.free take: memfd, map, lock, IOMMU map and back. */
static void bench_dma(long n) {
  uint64_t iova = 1 << 20;
  double t0 = now_ns();
  for (long i = 0; i < n; i++) {
    int fd = memfd_create("edu-baseline", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, 4096)) die("memfd");
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) die("mmap");
    madvise(p, 4096, MADV_DONTFORK);
    if (mlock(p, 4096)) die("mlock");
    struct vfio_iommu_type1_dma_map map = {.argsz = sizeof map, .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                                           .vaddr = (uintptr_t)p, .iova = iova, .size = 4096};
    if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map)) die("map dma");
    struct vfio_iommu_type1_dma_unmap unmap = {.argsz = sizeof unmap, .iova = iova, .size = 4096};
    if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &unmap)) die("unmap dma");
    munmap(p, 4096);
    close(fd);
  }
  double t1 = now_ns();
  /* Streaming map of memory the program already has. */
  static char buffer[4096] __attribute__((aligned(4096)));
  double t2 = now_ns();
  for (long i = 0; i < n; i++) {
    struct vfio_iommu_type1_dma_map map = {.argsz = sizeof map, .flags = VFIO_DMA_MAP_FLAG_READ,
                                           .vaddr = (uintptr_t)buffer, .iova = iova, .size = 4096};
    if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map)) die("map dma");
    struct vfio_iommu_type1_dma_unmap unmap = {.argsz = sizeof unmap, .iova = iova, .size = 4096};
    if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &unmap)) die("unmap dma");
  }
  double t3 = now_ns();
  printf("{\"coherentPerSec\": %.1f, \"streamingPerSec\": %.1f}\n", n / ((t1 - t0) / 1e9), n / ((t3 - t2) / 1e9));
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/*
 * Run on the CPUs the kernel delivers IRQ `name` to (its effective affinity), as bench/vfio/guest.ts
 * does: under TCG a wake-up of another, halted vCPU costs tens of us, which neither side should pay.
 */
static void pin_to_irq(const char *name) {
  FILE *f = fopen("/proc/interrupts", "r");
  if (!f) return;
  char line[1024];
  int irq = -1;
  size_t len = strlen(name);
  while (fgets(line, sizeof line, f)) {
    size_t l = strlen(line);
    while (l > 0 && (line[l - 1] == '\n' || line[l - 1] == ' ')) line[--l] = 0;
    if (l > len && !strcmp(line + l - len, name) && line[l - len - 1] == ' ') irq = atoi(line);
  }
  fclose(f);
  if (irq < 0) return;
  char path[128];
  snprintf(path, sizeof path, "/proc/irq/%d/effective_affinity_list", irq);
  f = fopen(path, "r");
  if (!f) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  int a, b, c;
  while ((c = fscanf(f, "%d-%d", &a, &b)) >= 1) {
    if (c == 1) b = a;
    for (int i = a; i <= b && i < CPU_SETSIZE; i++) CPU_SET(i, &set);
    if (fgetc(f) != ',') break;
  }
  fclose(f);
  if (CPU_COUNT(&set) > 0) sched_setaffinity(0, sizeof set, &set);
}

/* An eventfd signalled by the edu's MSI, this thread pinned where the kernel takes the IRQ. */
static int route_msi(const char *address) {
  int efd = eventfd(0, EFD_CLOEXEC);
  if (efd < 0) die("eventfd");
  char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
  struct vfio_irq_set *set = (struct vfio_irq_set *)buf;
  set->argsz = sizeof buf;
  set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  set->index = VFIO_PCI_MSI_IRQ_INDEX;
  set->start = 0;
  set->count = 1;
  memcpy(set->data, &efd, sizeof efd);
  if (ioctl(device, VFIO_DEVICE_SET_IRQS, set)) die("set irqs");
  char name[64];
  snprintf(name, sizeof name, "vfio-msi[0](%s)", address);
  pin_to_irq(name);
  return efd;
}

/* IRQ_SAMPLES: {"pid", "irqTid", "samples": [[start, end], ...]} (ns, CLOCK_MONOTONIC), before sorting. */
static void dump_samples(const double *start, const double *lat, long n, int irq_tid) {
  const char *file = getenv("IRQ_SAMPLES");
  if (!file || !*file) return;
  FILE *f = fopen(file, "w");
  if (!f) die("IRQ_SAMPLES");
  fprintf(f, "{\"pid\": %d, \"irqTid\": %d, \"samples\": [", (int)getpid(), irq_tid);
  for (long i = 0; i < n; i++) fprintf(f, "%s[%.0f, %.0f]", i ? ", " : "", start[i], start[i] + lat[i]);
  fprintf(f, "]}\n");
  fclose(f);
}

/* Per read, the least over batches of 1000 (the batch the host left alone), as guest.ts's clock mode. */
static void bench_clock(long n) {
  double best = 1e18;
  for (long b = 0; b < n / 1000; b++) {
    double t0 = now_ns();
    for (int i = 0; i < 1000; i++) now_ns();
    double dt = (now_ns() - t0) / 1000;
    if (b >= 5 && dt < best) best = dt;
  }
  printf("{\"clockNs\": %.1f}\n", best);
}

static void print_percentiles(double *lat, long n) {
  qsort(lat, n, sizeof *lat, cmp);
  printf("{\"p50Us\": %.2f, \"p90Us\": %.2f, \"p99Us\": %.2f}\n", lat[n / 2] / 1e3, lat[n * 9 / 10] / 1e3, lat[n * 99 / 100] / 1e3);
}

static void bench_irq(long n, const char *address) {
  int efd = route_msi(address);
  double *lat = calloc(n, sizeof *lat), *start = calloc(n, sizeof *start);
  for (long i = 0; i < n; i++) {
    uint64_t count;
    double t0 = now_ns();
    bar0[0x60 / 4] = 1; /* raise */
    if (read(efd, &count, sizeof count) != sizeof count) die("read eventfd");
    lat[i] = now_ns() - t0;
    start[i] = t0;
    bar0[0x64 / 4] = bar0[0x24 / 4]; /* acknowledge */
  }
  dump_samples(start, lat, n, (int)gettid());
  print_percentiles(lat, n);
}

/* irq-thread: the reader thread's side (it inherits the raiser's CPUs: the IRQ's). */
static int irq_efd;
static int done_efd; /* the reader signals the raiser here once it has stamped an interrupt */
static long irq_n;
static volatile double taken_at;
static volatile int reader_tid;
static int irq_priority; /* > 0: the reader thread runs SCHED_FIFO at this priority */

static void *irq_reader(void *arg) {
  (void)arg;
  reader_tid = (int)gettid();
  if (irq_priority > 0) {
    struct sched_param param = {.sched_priority = irq_priority};
    if (sched_setscheduler(0, SCHED_FIFO, &param)) die("sched_setscheduler");
  }
  for (long i = 0; i < irq_n + 100; i++) {
    uint64_t count, one = 1;
    if (read(irq_efd, &count, sizeof count) != sizeof count) die("read eventfd");
    taken_at = now_ns();
    if (write(done_efd, &one, sizeof one) != sizeof one) die("write eventfd");
  }
  return NULL;
}

/*
 * The raiser blocks in read(2) on an eventfd the reader writes once it has stamped the interrupt,
 * as bench/vfio/guest.ts's raiser does: both sides wait the same way (one system call, no
 * user-space lock), so the comparison is the delivery, not the bench's wait.
 */
static void bench_irq_thread(long n, const char *address, int priority) {
  irq_efd = route_msi(address);
  done_efd = eventfd(0, EFD_CLOEXEC);
  if (done_efd < 0) die("eventfd");
  irq_priority = priority;
  irq_n = n;
  pthread_t reader;
  if (pthread_create(&reader, NULL, irq_reader, NULL)) die("pthread_create");
  usleep(10000); /* the reader is blocked in read() */
  double *lat = calloc(n, sizeof *lat), *start = calloc(n, sizeof *start);
  for (long i = -100; i < n; i++) {
    uint64_t count;
    double t0 = now_ns();
    bar0[0x60 / 4] = 1; /* raise */
    if (read(done_efd, &count, sizeof count) != sizeof count) die("read eventfd");
    if (i >= 0) {
      lat[i] = taken_at - t0;
      start[i] = t0;
    }
    bar0[0x64 / 4] = bar0[0x24 / 4]; /* acknowledge */
  }
  pthread_join(reader, NULL);
  dump_samples(start, lat, n, reader_tid);
  print_percentiles(lat, n);
}

int main(int argc, char **argv) {
  if (argc != 4 && !(argc == 5 && !strcmp(argv[1], "irq-thread"))) {
    fprintf(stderr, "usage: %s regs|dma|irq ADDRESS N | irq-thread ADDRESS N [PRIO] | clock - N\n", argv[0]);
    return 2;
  }
  long n = atol(argv[3]);
  if (!strcmp(argv[1], "clock")) {
    bench_clock(n);
    return 0;
  }
  open_device(argv[2]);
  if (!strcmp(argv[1], "regs")) bench_regs(n);
  else if (!strcmp(argv[1], "dma")) bench_dma(n);
  else if (!strcmp(argv[1], "irq")) bench_irq(n, argv[2]);
  else if (!strcmp(argv[1], "irq-thread")) bench_irq_thread(n, argv[2], argc == 5 ? atoi(argv[4]) : 0);
  else return 2;
  return 0;
}
