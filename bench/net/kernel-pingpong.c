/*
 * The kernel's side of bench:net's latency case: 60-byte frames through the kernel's virtio_net
 * over AF_PACKET raw sockets (the same frames our driver's worker sends).
 *   kernel-pingpong echo IFACE        send every frame of ethertype 0x88b6 back, MACs swapped
 *   kernel-pingpong ping IFACE N      N round trips; prints {"rttUs":[...]} sorted
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define ETHERTYPE 0x88b6

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* bench:net --trace: markers in the guest kernel's trace (bench/net/trace.ts). */
static int trace_fd = -1;
static void mark(const char *step) {
  if (trace_fd >= 0 && write(trace_fd, step, strlen(step)) < 0) trace_fd = -1;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s echo|ping IFACE [N]\n", argv[0]);
    return 2;
  }
  const char *tr = getenv("NET_BENCH_TRACE");
  if (tr && strcmp(tr, "1") == 0) trace_fd = open("/sys/kernel/tracing/trace_marker", O_WRONLY);
  int fd = socket(AF_PACKET, SOCK_RAW, htons(ETHERTYPE));
  if (fd < 0) { perror("socket"); return 1; }
  struct sockaddr_ll sll = {0};
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(ETHERTYPE);
  sll.sll_ifindex = if_nametoindex(argv[2]);
  if (sll.sll_ifindex == 0) { perror("if_nametoindex"); return 1; }
  if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) { perror("bind"); return 1; }
  unsigned char buf[2048];
  if (strcmp(argv[1], "echo") == 0) {
    printf("{\"ready\":true}\n");
    fflush(stdout);
    for (;;) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n < 14) continue;
      mark("netlat E rx");
      unsigned char t[6];
      memcpy(t, buf, 6);
      memcpy(buf, buf + 6, 6);
      memcpy(buf + 6, t, 6);
      if (sendto(fd, buf, n, 0, (struct sockaddr *)&sll, sizeof sll) < 0) perror("sendto");
      mark("netlat E tx");
    }
  }
  int rounds = argc > 3 ? atoi(argv[3]) : 1000;
  /* Our own MAC as the source: the echo swaps addresses, and the kernel's NIC filters on it. */
  struct ifreq ifr = {0};
  strncpy(ifr.ifr_name, argv[2], IFNAMSIZ - 1);
  if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) { perror("SIOCGIFHWADDR"); return 1; }
  struct timeval tv = {0, 200000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  double *rtt = calloc(rounds, sizeof *rtt);
  unsigned char frame[60] = {0};
  memset(frame, 0xff, 6);
  memcpy(frame + 6, ifr.ifr_hwaddr.sa_data, 6);
  frame[12] = ETHERTYPE >> 8;
  frame[13] = ETHERTYPE & 0xff;
  for (int r = -100; r < rounds; r++) {
    int seq = r + 100;
    frame[14] = seq & 0xff;
    frame[15] = (seq >> 8) & 0xff;
    double t0 = now_us();
    mark("netlat P tx");
    if (sendto(fd, frame, sizeof frame, 0, (struct sockaddr *)&sll, sizeof sll) < 0) perror("sendto");
    for (;;) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n < 0) break; /* lost: counts as the 200 ms timeout */
      if (n >= 16 && buf[14] == frame[14] && buf[15] == frame[15]) break;
    }
    mark("netlat P rx");
    if (r >= 0) rtt[r] = now_us() - t0;
  }
  qsort(rtt, rounds, sizeof *rtt, cmp);
  printf("{\"rttUs\":[");
  for (int i = 0; i < rounds; i++) printf("%s%.1f", i ? "," : "", rtt[i]);
  printf("]}\n");
  return 0;
}
