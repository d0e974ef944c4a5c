/**
 * Process-wide V8 garbage-collector choices a driver application may opt into. userpci never
 * calls these on import: they change the GC for every module of the process, which is the
 * application's decision (our own long-running servers, `userpci nvme export|ublk`, opt in).
 *
 * The young generation's collector and size are chosen when V8 starts, so they are node launch
 * flags, not calls. For a promise-heavy process (the NVMe promise API: a few hundred bytes of
 * garbage per I/O), bench:native measured (docs/ARCHITECTURE.md, GC bullets):
 *
 *   node --minor-mc --single-threaded-gc --min-semi-space-size=128 --max-semi-space-size=128 app.js
 *
 * V8's young-generation mark-compact (paged new space) instead of its scavenger, every GC task on
 * the main thread, and 128 MiB of new space: the promise cases spent 1.3-2.5% of wall time in GC
 * where V8's defaults spent 2.6-13% and useSerialScavenge() 2.1-4.4% (two runs on a busy host),
 * for ~100 MiB more resident memory (new space 128 MiB against 32). The collector is most of it:
 * `node --minor-mc --single-threaded-gc` at V8's default size got 1.8-2.4% with no more memory in
 * a run where 128 MiB got 1.9% (load 2-5). The gain is the promise API's, whose young survivors
 * are tiny: a mix with megabytes surviving each young GC (bench/native/gc-soak.ts, 128 MiB)
 * spent as long in GC either way and took 2.5x the memory, so measure the application's own
 * workload. `--single-threaded-gc` also takes the old generation's
 * concurrent marking and sweeping off helper threads: its collections pause longer.
 * `--minor-mc` is marked experimental in V8 11.3 (Node 20): opt in knowingly, never by default.
 * Our own servers run under it when started so: `node FLAGS node_modules/userpci/bin/userpci.js
 * nvme export ...`. It cannot be switched on later: `v8.setFlagsFromString('--minor-mc')` in a
 * running process aborted it at the next young-generation GC (V8 fatal error, Node 20.20).
 * Under --minor-mc there are no scavenges and useSerialScavenge() changes nothing.
 */
import * as v8 from 'node:v8';

/**
 * Scavenge the young generation on the main thread alone (V8's --no-parallel-scavenge; `false`
 * goes back to V8's default, parallel). Takes effect at the next scavenge.
 *
 * For processes whose garbage is short-lived and whose live young data is small: the NVMe
 * promise API allocates a few hundred bytes per I/O of which ~10 KB survive each scavenge. A
 * parallel scavenge then spends more on starting and joining helper threads than it saves, and
 * on a busy machine waits for helpers the scheduler does not run: bench:native's promise cases
 * measure both (docs/ARCHITECTURE.md). Leave it off where scavenges copy megabytes.
 */
export function useSerialScavenge(serial = true): void {
  v8.setFlagsFromString(serial ? '--no-parallel-scavenge' : '--parallel-scavenge');
}
