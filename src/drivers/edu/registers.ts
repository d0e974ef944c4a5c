/** QEMU's edu device (docs/specs/edu.rst): BAR0 register offsets and bits. */
export const EDU_VENDOR_ID = 0x1234;
export const EDU_DEVICE_ID = 0x11e8;
/** Reads 0xRRrr00ed: major.minor version and the 0xed signature. */
export const REG_ID = 0x00;
/** Reads back the bitwise inverse of what was written. */
export const REG_LIVENESS = 0x04;
/** Write n to start computing n!; read the result when STATUS_COMPUTING clears. */
export const REG_FACTORIAL = 0x08;
export const REG_STATUS = 0x20;
export const STATUS_COMPUTING = 0x01;
/** Raise interrupt 0x1 when a factorial is done. */
export const STATUS_IRQ_ON_FACTORIAL = 0x80;
export const REG_IRQ_STATUS = 0x24;
export const REG_IRQ_RAISE = 0x60;
export const REG_IRQ_ACK = 0x64;
export const REG_DMA_SRC = 0x80;
export const REG_DMA_DST = 0x88;
export const REG_DMA_COUNT = 0x90;
export const REG_DMA_CMD = 0x98;
export const DMA_CMD_START = 0x1;
/** 0: RAM to device buffer, 1: device buffer to RAM. */
export const DMA_CMD_TO_RAM = 0x2;
export const DMA_CMD_IRQ = 0x4;
/** Interrupt status bits the device sets. */
export const IRQ_FACTORIAL = 0x1;
export const IRQ_DMA = 0x100;
/** The device-side DMA buffer lives at this bus address inside the device. */
export const DMA_BUFFER_ADDRESS = 0x40000;
export const DMA_BUFFER_SIZE = 4096;
/**
 * How much of that buffer a transfer may use. QEMU's edu up to at least 7.2 checks the range with
 * an exclusive end compared by `<`, so a transfer that ends exactly at the buffer's end is
 * refused with hw_error(), which aborts the whole VM. Staying one byte short works on every
 * version and on our model.
 */
export const DMA_BUFFER_USABLE = DMA_BUFFER_SIZE - 1;
/** The edu device's default DMA mask: 28 bits. */
export const EDU_DEFAULT_DMA_MASK = 0xfffffff;
