/** A TAP interface that lends a virtio-net NIC, driven from user space, to the kernel's network stack. */
export { NetTap, type NetTapOptions, type NetTapStats } from './tap';
