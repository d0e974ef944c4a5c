/**
 * bench:blk --trace's summary of a guest ftrace: per-I/O counts from a hand-written trace in the
 * kernel's text format (two I/Os by the reader, a server thread waking and sleeping on the other CPU).
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { summarize } from '../../bench/blk/trace';

const TRACE = `# tracer: nop
#
 kernel-baselin-300     [001] d..1.   100.000000: sys_enter: NR 426 (3, 1, 1, 1, 0, 0)
 kernel-baselin-300     [001] d..2.   100.000010: ipi_send_cpu: cpu=0 callsite=ttwu_queue_wakelist+0x1b0/0x1e0 callback=generic_smp_call_function_single_interrupt+0x0/0x20
 kernel-baselin-300     [001] d..2.   100.000100: sched_switch: prev_comm=kernel-baselin prev_pid=300 prev_prio=120 prev_state=S ==> next_comm=swapper/1 next_pid=0 next_prio=120
          <idle>-0       [000] d.h1.   100.000020: call_function_single_entry: vector=251
          <idle>-0       [000] d..2.   100.000050: sched_wakeup: comm=node pid=200 prio=120 target_cpu=000
          <idle>-0       [000] d..2.   100.000060: sched_switch: prev_comm=swapper/0 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=node next_pid=200 next_prio=120
            node-200     [000] d..1.   100.000070: sys_enter: NR 232 (5, 7fff, 1024, -1, 0, 0)
            node-200     [000] d..1.   100.000080: contention_begin: 00000000deadbeef (flags=SPIN)
            node-200     [000] d..1.   100.000081: <stack trace>
 => queued_spin_lock_slowpath+0x1c/0x30
 => _raw_spin_lock+0x20/0x30
 => ep_poll_callback+0x40/0x200
 => __wake_up_common+0x70/0xa0
 => eventfd_signal_mask+0x50/0x90
            node-200     [000] d..1.   100.000090: sys_enter: NR 426 (4, 1, 0, 0, 0, 0)
            node-200     [000] d..2.   100.000160: sched_switch: prev_comm=node prev_pid=200 prev_prio=120 prev_state=S ==> next_comm=swapper/0 next_pid=0 next_prio=120
 kernel-baselin-300     [001] d..1.   100.000200: sys_enter: NR 426 (3, 1, 1, 1, 0, 0)
            node-200     [000] d..1.   100.000210: sched_migrate_task: comm=node pid=200 prio=120 orig_cpu=0 dest_cpu=1
`;

test('blk trace: per-I/O system calls, CPU time, switches, IPIs and lock stacks', () => {
  const s = summarize(TRACE);
  assert.equal(s.ios, 2, 'I/Os are the reader\'s io_uring_enter calls');
  assert.equal(s.lost, false);
  assert.deepEqual(s.syscalls, { 'reader 426': 1, 'node/200 232': 0.5, 'node/200 426': 0.5 });
  // The server ran 100 µs (from its switch in at .000060 to its switch out at .000160) on CPU 0.
  assert.equal(s.cpuUs['node/200'], 50);
  assert.equal(s.onCpu['node/200@0'], 50);
  assert.equal(s.cpuUs.idle, 20, 'CPU 0 idle from its first event (.000020) to the switch (.000060)');
  assert.equal(s.switchesIn['node/200'], 0.5);
  assert.equal(s.wakeups['node/200'], 0.5);
  assert.equal(s.irqs.call_function_single, 0.5);
  assert.deepEqual(s.ipis, { 'reader ttwu_queue_wakelist>generic_smp_call_function_single_interrupt': 0.5 });
  assert.deepEqual(s.migrations, { 'node/200': 0.5 });
  assert.deepEqual(s.contentions, { 'node/200: ep_poll_callback < __wake_up_common < eventfd_signal_mask': 0.5 });
});

test('blk trace: a trace that lost events says so', () => {
  assert.equal(summarize(`${TRACE}CPU:1 [LOST 12 EVENTS]\n`).lost, true);
});
