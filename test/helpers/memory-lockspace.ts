/** A formatted in-memory lockspace on virtual time, with one device (storage path) per host. */
import { VirtualClock } from "../../src/core/clock.ts";
import { DeltaLease, type JoinOptions } from "../../src/lease/delta-lease.ts";
import { formatLockspace } from "../../src/lease/lease-file.ts";
import { layout } from "../../src/lease/layout.ts";
import { MemoryDevice, MemoryStorage } from "../../src/lease/memory-device.ts";
import type { SectorSize } from "../../src/lease/sector-device.ts";

export interface MemoryLockspaceOptions {
  sectorSize?: SectorSize;
  hosts?: number;
  slots?: number;
  ioTimeoutMs?: number;
  killBudgetMs?: number;
}

export class MemoryLockspace {
  readonly clock = new VirtualClock();
  readonly storage: MemoryStorage;
  readonly ioTimeoutMs: number;

  private constructor(options: Required<MemoryLockspaceOptions>) {
    this.ioTimeoutMs = options.ioTimeoutMs;
    this.storage = new MemoryStorage(layout(options).totalBytes, options.sectorSize);
  }

  static async create(options: MemoryLockspaceOptions = {}): Promise<MemoryLockspace> {
    const full = { sectorSize: 512 as SectorSize, hosts: 8, slots: 4, ioTimeoutMs: 1_000, killBudgetMs: 6_000, ...options };
    const space = new MemoryLockspace(full);
    const device = space.device("format");
    await space.clock.run(
      formatLockspace(device, { ...full, name: "test", maxIoTimeoutMs: full.ioTimeoutMs, force: false, ioTimeoutMs: full.ioTimeoutMs }),
    );
    return space;
  }

  /** A new path to the shared storage, with faults of its own. */
  device(name: string): MemoryDevice {
    return new MemoryDevice(this.storage, this.clock, name);
  }

  /** Joins host ids 1..count, one after the other. */
  async joinAll(count: number): Promise<Array<{ lease: DeltaLease; device: MemoryDevice }>> {
    const hosts = [];
    for (let id = 1; id <= count; id++) hosts.push(await this.join(id));
    return hosts;
  }

  /** Joins host `hostId` through a device of its own; runs virtual time until done. */
  async join(hostId: number, options: Partial<JoinOptions> = {}): Promise<{ lease: DeltaLease; device: MemoryDevice }> {
    const device = this.device(`host${hostId}`);
    const lease = await this.clock.run(
      DeltaLease.join(device, this.clock, {
        hostId,
        hostName: `host${hostId}`,
        installId: hostId.toString(16).padStart(32, "0"),
        ioTimeoutMs: this.ioTimeoutMs,
        idAllocation: "unique",
        ...options,
      }),
    );
    return { lease, device };
  }
}
