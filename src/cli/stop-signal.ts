/**
 * The first SIGINT or SIGTERM, as a promise. A long-running command calls this before it says
 * it is ready: until a listener exists Node keeps these signals' default action (the process
 * dies by the signal), so a supervisor that signals as soon as it reads "serving" would kill
 * the command instead of stopping it.
 */
export function stopSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (signal: NodeJS.Signals) => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(signal);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}
