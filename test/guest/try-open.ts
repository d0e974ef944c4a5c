/** Child process: try to open a device and print the outcome as JSON (for the EBUSY test). */
import { openDevice } from '../../src/device/open';

openDevice(process.argv[2]!).then(
  (device) => {
    device.close();
    process.stdout.write(JSON.stringify({ ok: true }));
  },
  (err) => process.stdout.write(JSON.stringify({ ok: false, code: err.code, message: err.message, typed: err.name })),
);
