import { openDevice, EduDriver } from 'userpci';

await using device = await openDevice(process.argv[2]!, { dmaMask: 0xfffffff }); // '0000:00:03.0' or '/tmp/edu.sock'
const regs = device.bar(0);                 // register access: full-width loads and stores, bounds-checked
console.log(regs.read32(0).toString(16));   // 10000ed

const edu = new EduDriver(device);          // quiesces the device, then lets it master the bus
const buf = device.allocDma(4096);          // coherent, resident, IOVA below the mask
new Uint8Array(buf.buffer).set([1, 2, 3]);
await edu.dma('to-device', buf.iova, 0, 3);

const mine = new Uint8Array(10_000);        // streaming map of memory you already have
const map = device.mapDma(mine, 'from-device');   // the IOMMU lets the device only write it
console.log(map.segments);                  // [{ iova, length: 10000 }]
map.unmap();

const [msi] = device.enableInterrupts('msi');
edu.raiseInterrupt(1);
await msi!.wait({ timeoutMs: 1000 });       // or msi.on('interrupt', ...), or for await (const n of msi)

device.on('removed', () => console.log('unplugged: every wait rejected, every access now ENODEV'));
