// One-off guest runs from the command line.
//
//   node dist/scripts/guest/run.js --device edu --test dist/test/guest/smoke.test.js
//   node dist/scripts/guest/run.js --device edu --command 'lspci -nn; ls /dev/vfio'
//   node dist/scripts/guest/run.js --assets          build (or check) the cached assets only
//
// Options (repeatable where it makes sense):
//   --device SPEC     adds `-device SPEC` (e.g. edu, e1000e, nvme,drive=d0,serial=x)
//   --drive SPEC      adds `-drive SPEC`  (e.g. file=/tmp/d.img,if=none,format=raw,id=d0)
//   --qemu ARGS       adds raw QEMU arguments, split on whitespace
//   --test FILE       a compiled test file or folder to run with node --test
//   --command CMD     a shell command instead of tests; its stdout is printed at the end
//   --env K=V         environment for the guest job
//   --timeout SECONDS whole run, default 600
//   --memory MIB      guest RAM, default 1536
//   --memlock KIB     RLIMIT_MEMLOCK for the job (a number or 'unlimited'); default: kernel's
//   --kernel K        the guest's kernel: default (Debian 12's, 6.1) or 6.12
//   --rebuild         rebuild the assets even if cached

import { ensureGuestAssets, GuestKernel, GUEST_KERNELS } from './assets';
import { runInGuest, GuestRunError } from './index';
import { installSignalHandlers, runSuites } from './suites';

const USAGE = 'usage: run.js [--device SPEC]... [--drive SPEC]... [--qemu ARGS] (--test FILE... | --command CMD | --assets) [--env K=V]... [--timeout S] [--memory MIB] [--memlock KIB|unlimited] [--kernel default|6.12] [--rebuild]';

async function main(argv: string[]): Promise<number> {
  const qemu: string[] = [];
  const tests: string[] = [];
  const env: Record<string, string> = {};
  let command: string | undefined;
  let timeoutS = 600;
  let memory: number | undefined;
  let memlock: number | 'unlimited' | undefined;
  let assetsOnly = false;
  let rebuild = false;
  let kernel: GuestKernel = 'default';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value\n${USAGE}`);
      return v;
    };
    switch (a) {
      case '--device': qemu.push('-device', val()); break;
      case '--drive': qemu.push('-drive', val()); break;
      case '--qemu': qemu.push(...val().split(/\s+/).filter(Boolean)); break;
      case '--test': tests.push(val()); break;
      case '--command': command = val(); break;
      case '--env': {
        const kv = val();
        const eq = kv.indexOf('=');
        if (eq < 1) throw new Error(`--env wants K=V, got ${kv}`);
        env[kv.slice(0, eq)] = kv.slice(eq + 1);
        break;
      }
      case '--timeout': timeoutS = Number(val()); break;
      case '--memory': memory = Number(val()); break;
      case '--memlock': {
        const v = val();
        memlock = v === 'unlimited' ? v : Number(v);
        break;
      }
      case '--assets': assetsOnly = true; break;
      case '--rebuild': rebuild = true; break;
      case '--kernel': {
        const k = val();
        if (!(GUEST_KERNELS as readonly string[]).includes(k)) throw new Error(`--kernel wants one of ${GUEST_KERNELS.join(', ')}`);
        kernel = k as GuestKernel;
        break;
      }
      case '-h': case '--help': console.log(USAGE); return 0;
      default: throw new Error(`unknown argument ${a}\n${USAGE}`);
    }
  }
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) throw new Error('--timeout wants seconds');
  const assets = await ensureGuestAssets({ force: rebuild, kernel });
  if (assetsOnly) {
    console.log(JSON.stringify(assets, null, 2));
    return 0;
  }
  if ((command === undefined) === (tests.length === 0)) throw new Error(`give either --test or --command\n${USAGE}`);
  if (command !== undefined) {
    try {
      const r = await runInGuest({ devices: qemu, command, timeoutMs: timeoutS * 1000, env, memoryMiB: memory, memlockKiB: memlock, assets });
      process.stdout.write(r.stdout);
      console.error(`[guest] exit ${r.exitCode}; boot ${r.bootMs} ms, total ${r.totalMs} ms`);
      return r.exitCode;
    } catch (e) {
      if (e instanceof GuestRunError) {
        console.error(e.message);
        return 1;
      }
      throw e;
    }
  }
  const ok = await runSuites([{ name: 'cli', qemuDevices: qemu, tests, timeoutMs: timeoutS * 1000, env, memoryMiB: memory, memlockKiB: memlock, kernel }], { assets });
  return ok ? 0 : 1;
}

if (require.main === module) {
  installSignalHandlers();
  main(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (e: Error) => {
      console.error(e.message);
      process.exitCode = 2;
    },
  );
}
