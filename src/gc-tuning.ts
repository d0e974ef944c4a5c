/**
 * Process-wide V8 garbage-collector choices a driver application may opt into. userpci never
 * calls these on import: they change the GC for every module of the process, which is the
 * application's decision (our own long-running servers, `userpci nvme export|ublk`, opt in).
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
