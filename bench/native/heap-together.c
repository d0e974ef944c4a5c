/*
 * bench:native only (NVME_PAGES_TOGETHER=1): an LD_PRELOAD shim that makes V8 place its heap pages
 * next to each other. V8 11.3 (Node 20, no pointer compression) maps every 256 KiB heap page at
 * a random address hint below 2^46, so each page has page tables of its own; a scavenge touches
 * every new-space page's header (semi-space flip, mark-bit clearing, the allocation counter's
 * page walk), each a cold page walk (docs/ARCHITECTURE.md, the GC bullets). With [4 GiB, 2^46)
 * reserved (PROT_NONE, nothing committed) before V8 starts, every hint is taken and the kernel
 * places the pages itself, top-down and adjacent. Not part of the library: the measurement of
 * what page placement costs.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

__attribute__((constructor)) static void reserve_hint_range(void) {
  const unsigned long lo = 1ul << 32, hi = 1ul << 46;
  void *p = mmap((void *)lo, hi - lo, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
  if (p != (void *)lo) {
    fprintf(stderr, "heap-together: could not reserve [4 GiB, 2^46) (%p)\n", p);
    exit(70);
  }
}
