/**
 * Where a recovered VM goes: a pure choice among the candidate hosts. A host qualifies when
 * every plane is up and it is not in maintenance (a host with a plane down may be the next to
 * fail), it has the free memory and CPUs the VM needs, it runs no VM of the VM's anti-affinity
 * group (counting the VMs already on their way to it), and it is below its limit of recoveries
 * in progress. Among those, the one with the most free memory wins (spreading the load), then
 * the one with fewer recoveries in progress, then the name (a stable order for replays).
 */

export interface PlacementVm {
  readonly uuid: string;
  readonly memoryKiB: number;
  readonly vcpus: number;
  /** Anti-affinity group; "" for none. */
  readonly group: string;
}

export interface Candidate {
  readonly name: string;
  /** Every plane up and not in maintenance. */
  readonly eligible: boolean;
  readonly cpus: number;
  readonly memoryKiB: number;
  /** Taken by the VMs running on it and those being started on it. */
  readonly usedMemoryKiB: number;
  readonly usedVcpus: number;
  /** Anti-affinity groups of the VMs on it, running or starting. */
  readonly groups: ReadonlySet<string>;
  /** Recoveries in progress onto it. */
  readonly starting: number;
}

/**
 * How many vCPUs a host may carry per physical CPU: VMs share cores, but recovering onto a host
 * already far over-committed would only make both slow.
 */
export const cpuOvercommit = 4;

export type Placement = { readonly host: string } | { readonly none: string };

export function placeVm(vm: PlacementVm, candidates: readonly Candidate[], perHostLimit: number, exclude: ReadonlySet<string> = new Set()): Placement {
  if (!(vm.memoryKiB > 0 && vm.vcpus > 0)) throw new RangeError(`VM ${vm.uuid}: memory ${vm.memoryKiB} KiB, ${vm.vcpus} vCPUs`);
  const reasons = new Map<string, number>();
  const refuse = (reason: string) => reasons.set(reason, (reasons.get(reason) ?? 0) + 1);
  const fitting = candidates.filter((host) => {
    if (exclude.has(host.name)) return refuse("already tried"), false;
    if (!host.eligible) return refuse("a plane down or in maintenance"), false;
    if (host.starting >= perHostLimit) return refuse(`at its limit of ${perHostLimit} recoveries in progress`), false;
    if (host.memoryKiB - host.usedMemoryKiB < vm.memoryKiB) return refuse("not enough free memory"), false;
    if (host.cpus * cpuOvercommit - host.usedVcpus < vm.vcpus) return refuse("not enough free CPUs"), false;
    if (vm.group !== "" && host.groups.has(vm.group)) return refuse(`already runs a VM of group "${vm.group}"`), false;
    return true;
  });
  const best = fitting.sort(
    (a, b) => b.memoryKiB - b.usedMemoryKiB - (a.memoryKiB - a.usedMemoryKiB) || a.starting - b.starting || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  )[0];
  if (best !== undefined) return { host: best.name };
  if (candidates.length === 0) return { none: "no hosts" };
  return { none: `no host fits: ${[...reasons].map(([reason, count]) => `${count} ${reason}`).join(", ")}` };
}
